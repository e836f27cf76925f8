"""A dropped SSH connection is not a failed step: reads are repeated on a new connection, an
op that was cut off makes its step run again from its facts, and a drop that outlasts the
bound fails with the host, the step and the cause."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import paramiko
import pytest

from apply import ops
from apply.api import Context, step
from apply.facts import FileInfo
from apply.runner import ApplyError, ConnectionLost, Host
from apply.testing import FakeConnection, fake_context, fake_host
from tests.support.ssh_server import ExecServer
from transport.hostkeys import KnownHosts
from transport.ssh import Backoff, Endpoint, fabric_connection


def test_a_read_cut_off_by_a_drop_is_repeated_on_a_new_connection(tmp_path: Path) -> None:
    conn = FakeConnection({"cat /etc/hostname": (0, "node1\n", "")})
    conn.drop_on("cat /etc/hostname")
    reconnects: list[FakeConnection] = []
    host = fake_host(conn, lock_dir=tmp_path, reconnects=reconnects)
    assert host.run("cat /etc/hostname").stdout == "node1\n"
    assert len(reconnects) == 1 and host.reconnects == 1
    assert reconnects[0].commands == ["cat /etc/hostname"]


def test_without_a_way_to_reconnect_a_drop_is_an_apply_error(tmp_path: Path) -> None:
    conn = FakeConnection()
    conn.drop_on("true")
    host = fake_host(conn, lock_dir=tmp_path)
    with pytest.raises(ApplyError, match=r"\[fake\] connection failed running 'true'"):
        host.run("true")


def test_an_op_cut_off_is_not_repeated_blindly(tmp_path: Path) -> None:
    conn = FakeConnection()
    conn.drop_on("systemctl restart demo")
    host = fake_host(conn, lock_dir=tmp_path, reconnects=[])
    with pytest.raises(ConnectionLost, match="while an op ran 'systemctl restart demo'"):
        host.execute("restart demo", ["systemctl restart demo"])
    assert host.connection is not conn and host.connection.commands == []


@step("demo file")
def _demo(ctx: Context) -> None:
    ops.file(ctx.host, "/etc/demo.conf", "wanted\n")


def test_a_step_cut_off_mid_op_runs_again_from_its_facts(tmp_path: Path) -> None:
    conn = FakeConnection(strict=False)
    # The first swap of the file is cut off; its facts must be read again before it reruns.
    swap = r"mv -f -- /etc/\.demo\.conf\.hvs-tmp\d+ /etc/demo\.conf"
    conn.drop_on(re.compile(swap))
    reconnects: list[FakeConnection] = []
    host = fake_host(conn, lock_dir=tmp_path, reconnects=reconnects)
    applied = _demo(fake_context(host))
    assert applied.changed and host.reconnects == 1
    again = reconnects[0].commands
    # On the new connection: the cut-off temp file is cleaned up, then the file's facts are
    # read again, and only then is it swapped in.
    assert again[0].startswith("rm -f -- /etc/.demo.conf.hvs-tmp"), again
    assert again.index(FileInfo("/etc/demo.conf").command) < again.index(again[-1]), again
    assert again[-1].startswith("mv -f -- /etc/.demo.conf.hvs-tmp"), again
    assert conn.files["/etc/demo.conf"] == b"wanted\n"


def test_a_step_whose_connection_keeps_dropping_fails_naming_host_and_step(tmp_path: Path) -> None:
    conn = FakeConnection()
    for _ in range(10):
        conn.drop_on(re.compile(r"mv -f -- .*"))
    host = fake_host(conn, lock_dir=tmp_path, reconnects=[])
    with pytest.raises(ApplyError, match=r"\[fake\] step 'demo file': the connection dropped 4 times"):
        _demo(fake_context(host))


def test_fabric_connection_reconnects_after_a_real_drop_and_checks_the_key(tmp_path: Path) -> None:
    server = ExecServer()
    known = tmp_path / "known_hosts"
    known.write_text(server.known_hosts_line())
    key = tmp_path / "id_rsa"
    paramiko.RSAKey.generate(1024).write_private_key_file(str(key))
    endpoint = Endpoint("local", "127.0.0.1", server.port, "tester", key, KnownHosts((known,)))
    connect = functools.partial(fabric_connection, endpoint, timeout=5)
    host = Host("local", connect(), lock_dir=tmp_path / "locks", connect=connect, backoff=Backoff(3, 0.1))
    try:
        assert host.run("say before - 0").stdout == "before"
        server.drop_connections()
        assert host.run("say after - 0").stdout == "after"
        assert host.reconnects == 1
        # A drop whose reconnect meets another host key is refused, not retried.
        server.drop_connections()
        known.write_text(server.known_hosts_line().replace(server.key.get_base64()[:40], "A" * 40))
        with pytest.raises(ApplyError, match="reconnecting after a drop"):
            host.run("exit 0")
    finally:
        host.close()
        server.close()


@step("demo service")
def _demo_service(ctx: Context) -> None:
    config = ops.file(ctx.host, "/etc/demo.conf", "wanted\n")
    ctx.host.execute("restart demo", ["systemctl restart demo"] if config.changed else [])


def test_a_change_made_before_the_drop_still_triggers_what_depends_on_it(tmp_path: Path) -> None:
    # The file was swapped in, then the restart was cut off: on the re-run the file is already
    # as desired, but the restart it calls for must still happen, and the file counts once.
    conn = FakeConnection()

    def stat(command: str) -> tuple[int, str, str]:
        present = "/etc/demo.conf" in conn.files
        return 0, "regular file|root|root|644|7\n" if present else "", ""

    conn.respond(FileInfo("/etc/demo.conf").command, stat)
    conn.drop_on("systemctl restart demo")
    reconnects: list[FakeConnection] = []
    host = fake_host(conn, lock_dir=tmp_path, reconnects=reconnects)
    applied = _demo_service(fake_context(host))
    assert "systemctl restart demo" in reconnects[0].commands
    assert [result.op for result in applied.changes] == ["file /etc/demo.conf", "restart demo"]
    assert [result.op for result in host.changes] == ["file /etc/demo.conf", "restart demo"]
    assert host.carried_changes == set()


def test_a_refused_login_on_reconnect_is_an_apply_error(tmp_path: Path) -> None:
    # A drop while a change locks everyone out: the reconnect's login is refused at once (no
    # retries against fail2ban), as an ApplyError the guard's rollback knows how to handle.
    conn = FakeConnection()
    conn.drop_on("cat /etc/hostname")

    def refuse() -> FakeConnection:
        raise paramiko.AuthenticationException("Authentication failed.")

    host = Host("fake", conn, lock_dir=tmp_path, connect=refuse, backoff=Backoff(attempts=6, first=30.0))
    with pytest.raises(ApplyError, match=r"reconnecting after a drop: AuthenticationException"):
        host.run("cat /etc/hostname")
