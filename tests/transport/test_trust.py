"""Host key checking (OpenSSH's StrictHostKeyChecking=yes) against a local SSH server on
127.0.0.1, for every way the suite connects (fabric, testinfra, paramiko, the probes):
known keys pass; unknown and different keys are refused with the host, port, key type,
SHA256 fingerprint and the fix; "[host]:port" and hashed entries work; accept-new records
an unknown key once and still refuses a changed one."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko
import pytest

from checks import probes
from tests.support.ssh_server import ExecServer
from transport.hostkeys import HostKeyError, KnownHosts, PinnedKeys, key_fingerprint
from transport.ssh import Endpoint, checks_host, fabric_connection, key_login


def _line(name: str, key: Any) -> str:
    return f"{name} {key.get_name()} {key.get_base64()}\n"


def _endpoint(ssh_server: ExecServer, key_file: Path, trust: KnownHosts) -> Endpoint:
    return Endpoint("local", "127.0.0.1", ssh_server.port, "tester", key_file, trust)


def _trust(tmp_path: Path, text: str, **kwargs: Any) -> KnownHosts:
    path = tmp_path / "known_hosts"
    path.write_text(text)
    return KnownHosts((path,), **kwargs)


def _fabric(endpoint: Endpoint) -> str:
    connection = fabric_connection(endpoint, timeout=5)
    try:
        return connection.run("say ok - 0", hide=True, in_stream=False).stdout
    finally:
        connection.close()


def _testinfra(endpoint: Endpoint) -> str:
    return checks_host(endpoint, timeout=5).run("say ok - 0").stdout


def _probe(endpoint: Endpoint) -> str:
    return ",".join(probes.ssh_auth_methods(endpoint, timeout=5))


def _paramiko(endpoint: Endpoint) -> str:
    return key_login(endpoint, timeout=5)


CLIENTS: dict[str, Callable[[Endpoint], str]] = {
    "fabric": _fabric,
    "testinfra": _testinfra,
    "probe": _probe,
    "paramiko": _paramiko,
}


def test_fingerprint_is_openssh_sha256(ssh_server: ExecServer, tmp_path: Path) -> None:
    pub = tmp_path / "key.pub"
    pub.write_text(_line("127.0.0.1", ssh_server.key))
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout
    assert key_fingerprint(ssh_server.key) in out


@pytest.mark.parametrize("client", CLIENTS)
def test_a_known_port_entry_is_accepted(
    ssh_server: ExecServer, key_file: Path, tmp_path: Path, client: str
) -> None:
    trust = _trust(tmp_path, ssh_server.known_hosts_line())
    assert CLIENTS[client](_endpoint(ssh_server, key_file, trust)) in {"ok", "password,publickey", "tester"}


def test_a_hashed_entry_is_accepted(ssh_server: ExecServer, key_file: Path, tmp_path: Path) -> None:
    hashed = paramiko.HostKeys.hash_host(f"[127.0.0.1]:{ssh_server.port}")
    trust = _trust(tmp_path, _line(hashed, ssh_server.key))
    assert _probe(_endpoint(ssh_server, key_file, trust)) == "password,publickey"
    assert _fabric(_endpoint(ssh_server, key_file, trust)) == "ok"


@pytest.mark.parametrize("client", CLIENTS)
def test_an_unknown_key_is_refused_with_fingerprint_and_fix(
    ssh_server: ExecServer, key_file: Path, tmp_path: Path, client: str
) -> None:
    # An entry for port 22 does not vouch for another port: "[host]:port" is its own name.
    trust = _trust(tmp_path, _line("127.0.0.1", ssh_server.key))
    with pytest.raises(HostKeyError) as caught:
        CLIENTS[client](_endpoint(ssh_server, key_file, trust))
    message = str(caught.value)
    assert "unknown" in message and f"127.0.0.1 port {ssh_server.port}" in message
    assert ssh_server.key.get_name() in message and key_fingerprint(ssh_server.key) in message
    assert f"ssh-keyscan -p {ssh_server.port} 127.0.0.1 >>" in message
    assert "ssh.strict_host_keys = false" in message
    assert caught.value.fingerprint == key_fingerprint(ssh_server.key)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_different_key_is_refused(
    ssh_server: ExecServer, key_file: Path, tmp_path: Path, client: str
) -> None:
    other = paramiko.RSAKey.generate(1024)
    trust = _trust(tmp_path, _line(f"[127.0.0.1]:{ssh_server.port}", other))
    with pytest.raises(HostKeyError) as caught:
        CLIENTS[client](_endpoint(ssh_server, key_file, trust))
    message = str(caught.value)
    assert "MISMATCH" in message and f"port {ssh_server.port}" in message
    assert key_fingerprint(ssh_server.key) in message and key_fingerprint(other) in message
    assert f"ssh-keygen -R '[127.0.0.1]:{ssh_server.port}'" in message


def test_no_known_hosts_file_trusts_nothing(ssh_server: ExecServer, key_file: Path, tmp_path: Path) -> None:
    trust = KnownHosts((tmp_path / "missing",))
    with pytest.raises(HostKeyError, match="unknown"):
        _probe(_endpoint(ssh_server, key_file, trust))


def test_accept_new_records_the_key_once_and_refuses_a_change(
    ssh_server: ExecServer, key_file: Path, tmp_path: Path
) -> None:
    record = tmp_path / "sub" / "known_hosts"
    trust = KnownHosts((record,), record_to=record)
    assert _fabric(_endpoint(ssh_server, key_file, trust)) == "ok"
    assert record.read_text().split() == [
        f"[127.0.0.1]:{ssh_server.port}",
        "ssh-rsa",
        ssh_server.key.get_base64(),
    ]
    assert record.stat().st_mode & 0o777 == 0o600
    # Now known: a strict connection passes, and a second accept-new one records nothing more.
    assert _probe(_endpoint(ssh_server, key_file, KnownHosts((record,)))) == "password,publickey"
    assert _fabric(_endpoint(ssh_server, key_file, trust)) == "ok"
    assert len(record.read_text().splitlines()) == 1
    # A different key is refused even in accept-new mode, and nothing is recorded.
    record.write_text(_line(f"[127.0.0.1]:{ssh_server.port}", paramiko.RSAKey.generate(1024)))
    before = record.read_text()
    with pytest.raises(HostKeyError, match=f"MISMATCH for 127.0.0.1 port {ssh_server.port}"):
        _fabric(_endpoint(ssh_server, key_file, trust))
    assert record.read_text() == before


def test_a_custom_fix_replaces_the_default_advice(
    ssh_server: ExecServer, key_file: Path, tmp_path: Path
) -> None:
    trust = _trust(tmp_path, "", fix="Fix: recreate the scratch server.")
    with pytest.raises(HostKeyError, match=r"Fix: recreate the scratch server\.") as caught:
        _testinfra(_endpoint(ssh_server, key_file, trust))
    assert "ssh-keyscan" not in str(caught.value)


def test_pinned_keys_replace_a_servers_previous_keys(tmp_path: Path) -> None:
    pinned = PinnedKeys(tmp_path / "known_hosts")
    old = paramiko.RSAKey.generate(1024)
    new = paramiko.RSAKey.generate(1024)
    pinned.pin("alpha", "10.0.0.5", [("ssh-rsa", old.get_base64())])
    pinned.pin("beta", "10.0.0.6", [("ssh-rsa", old.get_base64())])
    pinned.pin("alpha", "10.0.0.5", [("ssh-rsa", new.get_base64())])
    known = KnownHosts((pinned.path,)).load()
    assert known.lookup("10.0.0.5")["ssh-rsa"].get_base64() == new.get_base64()
    assert known.lookup("10.0.0.6")["ssh-rsa"].get_base64() == old.get_base64()
    pinned.unpin("alpha")
    assert KnownHosts((pinned.path,)).load().lookup("10.0.0.5") is None
    with pytest.raises(ValueError, match="unreadable host key"):
        pinned.pin("gamma", "10.0.0.7", [("ssh-rsa", "not base64!")])
