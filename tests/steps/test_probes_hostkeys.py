"""Host key checking (OpenSSH's StrictHostKeyChecking=yes) against a local paramiko SSH
server on 127.0.0.1: known keys pass; unknown and different keys are refused with the host,
port, key type, SHA256 fingerprint and the fix; "[host]:port" and hashed entries work."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from test_runner import _ExecServer

from steps import probes
from steps.runner import ApplyError, Host, HostKeyError, key_fingerprint, pin_host_keys


@pytest.fixture
def server() -> Iterator[Any]:
    srv = _ExecServer()
    try:
        yield srv
    finally:
        srv.close()


def _line(name: str, key: Any) -> str:
    return f"{name} {key.get_name()} {key.get_base64()}\n"


def _known(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text(text)
    return path


def test_fingerprint_is_openssh_sha256(server: Any, tmp_path: Path) -> None:
    pub = _known(tmp_path, _line("127.0.0.1", server.key))
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout
    assert key_fingerprint(server.key) in out


def test_known_port_entry_is_accepted_by_every_probe(server: Any, tmp_path: Path) -> None:
    files = [str(_known(tmp_path, _line(f"[127.0.0.1]:{server.port}", server.key)))]
    assert probes.ssh_auth_methods("127.0.0.1", server.port, "root", host_keys=files) == [
        "password",
        "publickey",
    ]
    # The test server lets any password in: getting past the host key check is what counts.
    with pytest.raises(AssertionError, match="succeeded"):
        probes.ssh_password_login_refused("127.0.0.1", server.port, "root", host_keys=files)
    key = tmp_path / "id_rsa"
    paramiko.RSAKey.generate(1024).write_private_key_file(str(key))
    assert probes.ssh_key_login("127.0.0.1", server.port, "root", str(key), host_keys=files) == ""


def test_hashed_entry_is_accepted(server: Any, tmp_path: Path) -> None:
    hashed = paramiko.HostKeys.hash_host(f"[127.0.0.1]:{server.port}")
    known = paramiko.HostKeys(str(_known(tmp_path, _line(hashed, server.key))))
    assert probes.ssh_auth_methods("127.0.0.1", server.port, "root", host_keys=known)


def _assert_unknown(message: str, port: int, key: Any) -> None:
    assert "unknown" in message
    assert "127.0.0.1" in message and f"port {port}" in message
    assert key.get_name() in message and key_fingerprint(key) in message
    assert f"ssh-keyscan -p {port} 127.0.0.1 >>" in message
    assert "ssh.strict_host_keys = false" in message


def test_unknown_key_is_refused_with_fingerprint_and_fix(server: Any, tmp_path: Path) -> None:
    # An entry for port 22 does not vouch for another port: "[host]:port" is its own name.
    files = [str(_known(tmp_path, _line("127.0.0.1", server.key)))]
    with pytest.raises(HostKeyError) as caught:
        probes.ssh_auth_methods("127.0.0.1", server.port, "root", host_keys=files)
    _assert_unknown(str(caught.value), server.port, server.key)
    assert caught.value.fingerprint == key_fingerprint(server.key)


def test_mismatching_key_is_refused(server: Any, tmp_path: Path) -> None:
    other = paramiko.RSAKey.generate(1024)
    files = [str(_known(tmp_path, _line(f"[127.0.0.1]:{server.port}", other)))]
    with pytest.raises(HostKeyError) as caught:
        probes.ssh_auth_methods("127.0.0.1", server.port, "root", host_keys=files)
    message = str(caught.value)
    assert "MISMATCH" in message and f"port {server.port}" in message
    assert key_fingerprint(server.key) in message and key_fingerprint(other) in message
    assert f"ssh-keygen -R '[127.0.0.1]:{server.port}'" in message
    key = tmp_path / "id_rsa"
    paramiko.RSAKey.generate(1024).write_private_key_file(str(key))
    with pytest.raises(HostKeyError, match="MISMATCH"):
        probes.ssh_key_login("127.0.0.1", server.port, "root", str(key), host_keys=files)


def test_probes_refuse_without_known_hosts(server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probes, "_trusted_files", [])
    with pytest.raises(HostKeyError, match="no known host keys"):
        probes.ssh_auth_methods("127.0.0.1", server.port, "root")


def test_trusted_files_are_the_default(server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probes, "_trusted_files", [])
    probes.trust_known_hosts(str(_known(tmp_path, _line(f"[127.0.0.1]:{server.port}", server.key))))
    assert probes.ssh_auth_methods("127.0.0.1", server.port, "root")


def _fabric_host(server: Any, files: list[str], tmp_path: Path, **pin: Any) -> Host:
    from fabric import Config, Connection

    def connect() -> Any:
        connection = Connection(
            "127.0.0.1",
            user="tester",
            port=server.port,
            config=Config(overrides={"load_ssh_configs": False}),
            connect_kwargs={"password": "x", "look_for_keys": False, "allow_agent": False},
        )
        pin_host_keys(connection.client, files, **pin)
        return connection

    return Host("local", connect(), lock_dir=tmp_path, connect=connect)


def test_fabric_connection_and_fresh_clone_check_host_keys(server: Any, tmp_path: Path) -> None:
    files = [str(_known(tmp_path, _line(f"[127.0.0.1]:{server.port}", server.key)))]
    host = _fabric_host(server, files, tmp_path)
    try:
        assert host.run("exit 0").ok
        fresh = host.fresh()
        fresh.close()
    finally:
        host.close()
    (tmp_path / "known_hosts").write_text("")
    host = _fabric_host(server, files, tmp_path)
    try:
        with pytest.raises(Exception) as caught:
            host.run("exit 0")
        assert "unknown" in str(caught.value) and key_fingerprint(server.key) in str(caught.value)
    finally:
        host.close()


def test_accept_new_records_the_key_once_and_refuses_a_change(server: Any, tmp_path: Path) -> None:
    record = tmp_path / "sub" / "known_hosts"
    files = [str(record)]
    host = _fabric_host(server, files, tmp_path, record_to=record)
    try:
        assert host.run("exit 0").ok
    finally:
        host.close()
    assert record.read_text().split() == [f"[127.0.0.1]:{server.port}", "ssh-rsa", server.key.get_base64()]
    assert record.stat().st_mode & 0o777 == 0o600
    # Now known: a strict connection passes.
    assert probes.ssh_auth_methods("127.0.0.1", server.port, "root", host_keys=files)
    # A different key is refused even in accept-new mode, and nothing is recorded.
    record.write_text(_line(f"[127.0.0.1]:{server.port}", paramiko.RSAKey.generate(1024)))
    before = record.read_text()
    host = _fabric_host(server, files, tmp_path, record_to=record)
    try:
        with pytest.raises(ApplyError, match=f"MISMATCH for 127.0.0.1 port {server.port}"):
            host.run("exit 0")
    finally:
        host.close()
    assert record.read_text() == before
