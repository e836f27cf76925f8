"""A check's read cut off by a dropped connection runs again on a new one; a host that stops
answering fails with one line naming it (``dropped_in`` finds it behind any wrapper)."""

from __future__ import annotations

import threading
from pathlib import Path

import paramiko
import pytest

from tests.support.ssh_server import ExecServer
from transport.hostkeys import KnownHosts
from transport.ssh import (
    Backoff,
    ConnectionDropped,
    Endpoint,
    checks_host,
    dropped_in,
    login_session,
    stop_session_command,
)


def _endpoint(ssh_server: ExecServer, tmp_path: Path) -> Endpoint:
    known = tmp_path / "known_hosts"
    known.write_text(ssh_server.known_hosts_line())
    key = tmp_path / "id_rsa"
    paramiko.RSAKey.generate(1024).write_private_key_file(str(key))
    return Endpoint("local", "127.0.0.1", ssh_server.port, "tester", key, KnownHosts((known,)))


def test_a_check_read_cut_off_by_a_drop_runs_again_on_a_new_connection(
    ssh_server: ExecServer, tmp_path: Path
) -> None:
    host = checks_host(_endpoint(ssh_server, tmp_path), timeout=5)
    assert host.run("say warm - 0").stdout == "warm"  # the connection is open
    cut = threading.Timer(0.5, ssh_server.drop_connections)
    cut.start()
    result = host.run("hang-once answered")
    cut.join()
    assert (result.rc, result.stdout) == (0, "answered")
    assert ssh_server.commands.count("hang-once answered") == 2


def test_a_host_that_stops_answering_is_gone_for_the_process(ssh_server: ExecServer, tmp_path: Path) -> None:
    endpoint = _endpoint(ssh_server, tmp_path)
    host = checks_host(endpoint, timeout=2, backoff=Backoff(attempts=2, first=0.1))
    assert host.run("exit 0").rc == 0
    ssh_server.close()  # no longer accepts connections: the host is down
    with pytest.raises(ConnectionDropped) as lost:
        host.run("exit 0")
    assert lost.value.host == "local" and isinstance(lost.value.cause, ConnectionRefusedError)
    with pytest.raises(ConnectionDropped, match=r"\[local\] the SSH connection dropped and 2 reconnect"):
        host.run("exit 0")  # at once, not after the bound again


def test_the_drop_is_found_behind_the_errors_that_wrap_it() -> None:
    dropped = ConnectionDropped("[probe] gone", host="probe", cause=TimeoutError("timed out"))
    try:
        try:
            raise dropped
        except ConnectionDropped as exc:
            raise RuntimeError("setup failed") from exc
    except RuntimeError as wrapper:
        assert dropped_in(wrapper) is dropped
    assert dropped.reason == "TimeoutError: timed out"
    assert dropped_in(ValueError("unrelated")) is None


def test_a_dropped_sessions_processes_are_found_by_their_audit_session() -> None:
    command = stop_session_command("4388")
    assert '= 4388 ] && kill "${p#/proc/}"' in command
    with pytest.raises(ValueError, match="not a session id"):
        stop_session_command("4388; reboot")
    assert login_session(object()) is None  # a stand-in connection has none
