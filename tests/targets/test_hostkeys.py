"""Host keys of ssh hosts: an ssh host's key is checked when the inventory is resolved
(unknown or different: a TargetError naming host, port, key type, fingerprint and fix;
strict_host_keys = false records it), the testinfra host checks it too, a refused port fails
at once, and scratch servers' pinned keys live in the suite's own known_hosts file, one
group of lines per ssh_server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import paramiko
import pytest

from settings.loader import load_settings
from settings.model import Settings
from targets import Target, TargetError, hostkeys
from targets.inventory import PlannedHost, resolve_ssh
from targets.spec import SSHSpec, resolve_alias
from tests.support.ssh_server import ExecServer
from transport.hostkeys import key_fingerprint
from transport.ssh import checks_host


def _settings(known_hosts: Path, key_file: Path, *, strict: bool = True) -> Settings:
    settings = load_settings()
    ssh = settings.ssh.model_copy(
        update={"known_hosts": known_hosts, "strict_host_keys": strict, "key": key_file, "connect_timeout": 5}
    )
    return settings.model_copy(update={"ssh": ssh})


def _host(ssh_server: ExecServer, spec: SSHSpec | None = None) -> PlannedHost:
    spec = spec or SSHSpec(host="127.0.0.1", user="root", port=ssh_server.port, key_file=None)
    return PlannedHost("box", ("primary",), spec)


def test_unknown_host_key_fails_resolution_with_fingerprint_and_fix(
    ssh_server: Any, key_file: Path, tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    with pytest.raises(TargetError) as caught:
        resolve_ssh(_settings(known, key_file), _host(ssh_server))
    message = str(caught.value)
    assert f"127.0.0.1 port {ssh_server.port}" in message and "unknown" in message
    assert "ssh-rsa" in message and key_fingerprint(ssh_server.key) in message
    assert f"ssh-keyscan -p {ssh_server.port} 127.0.0.1 >> {known}" in message
    assert "ssh.strict_host_keys = false" in message
    assert not known.exists()


def test_changed_host_key_fails_resolution(ssh_server: Any, key_file: Path, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    other = paramiko.RSAKey.generate(1024)
    known.write_text(f"[127.0.0.1]:{ssh_server.port} ssh-rsa {other.get_base64()}\n")
    for strict in (True, False):
        with pytest.raises(TargetError, match=f"MISMATCH for 127.0.0.1 port {ssh_server.port}") as caught:
            resolve_ssh(_settings(known, key_file, strict=strict), _host(ssh_server))
        assert key_fingerprint(ssh_server.key) in str(caught.value)


def test_accept_new_records_then_every_connection_checks(
    ssh_server: Any, key_file: Path, tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    target = resolve_ssh(_settings(known, key_file, strict=False), _host(ssh_server))
    assert target.known_hosts == (str(known),)
    entry = paramiko.HostKeys(str(known)).lookup(f"[127.0.0.1]:{ssh_server.port}")
    assert entry is not None and entry["ssh-rsa"].asbytes() == ssh_server.key.asbytes()
    # Strict from now on: resolution and the testinfra host pass with the recorded key.
    resolve_ssh(_settings(known, key_file), _host(ssh_server))
    assert checks_host(target.endpoint).run("exit 3").rc == 3


def test_testinfra_host_refuses_an_unknown_key(ssh_server: Any, key_file: Path, tmp_path: Path) -> None:
    target = Target(
        name="t",
        address="127.0.0.1",
        port=ssh_server.port,
        user="root",
        key_file=key_file,
        roles=("primary",),
        kind="ssh",
        known_hosts=(str(tmp_path / "empty"),),
    )
    with pytest.raises(Exception, match="unknown"):
        checks_host(target.endpoint).run("exit 0")


def test_hashed_entry_from_alias_known_hosts_file(ssh_server: Any, key_file: Path, tmp_path: Path) -> None:
    alias_known = tmp_path / "alias_known_hosts"
    hashed = paramiko.HostKeys.hash_host(f"[127.0.0.1]:{ssh_server.port}")
    alias_known.write_text(f"{hashed} ssh-rsa {ssh_server.key.get_base64()}\n")
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host box\n    HostName 127.0.0.1\n    Port {ssh_server.port}\n"
        f"    UserKnownHostsFile {alias_known}\n"
    )
    spec = resolve_alias("box", ssh_config=config)
    assert spec.known_hosts == (alias_known,)
    target = resolve_ssh(_settings(tmp_path / "known_hosts", key_file), _host(ssh_server, spec))
    assert target.known_hosts == (str(tmp_path / "known_hosts"), str(alias_known))
    assert Target.from_json(target.to_json()) == target


def test_scratch_pins_replace_a_servers_lines_and_its_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HVSUITE_CACHE_DIR", str(tmp_path))
    one, two = (paramiko.RSAKey.generate(1024) for _ in range(2))
    hostkeys.pin("a", "10.0.0.2", [("ssh-rsa", one.get_base64())])
    hostkeys.pin("b", "10.0.0.3", [("ssh-rsa", one.get_base64())])
    # "a" recreated on b's old address: a's old lines and the address' lines go.
    hostkeys.pin("a", "10.0.0.3", [("ssh-rsa", two.get_base64())])
    known = paramiko.HostKeys(str(hostkeys.pinned().path))
    assert known.lookup("10.0.0.2") is None
    assert known.lookup("10.0.0.3")["ssh-rsa"].asbytes() == two.asbytes()  # type: ignore[index]
    assert (tmp_path / "known_hosts").stat().st_mode & 0o777 == 0o600
    hostkeys.unpin("a")
    assert (tmp_path / "known_hosts").read_text() == ""


def test_a_refused_port_fails_at_once_naming_the_fix(key_file: Path, tmp_path: Path) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    # Nothing listens on `port` now; connect_timeout is 5 s, the answer must not wait for it.
    spec = SSHSpec(host="127.0.0.1", user="root", port=port, key_file=None)
    started = time.monotonic()
    with pytest.raises(TargetError, match=f"refused the connection: nothing listens on port {port}"):
        resolve_ssh(_settings(tmp_path / "known_hosts", key_file), PlannedHost("box", ("primary",), spec))
    assert time.monotonic() - started < 2
