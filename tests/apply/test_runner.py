"""The runner: modes, change derivation, fact caching, redaction, atomic put, locks."""

from __future__ import annotations

import itertools
import multiprocessing
import re
import time
from pathlib import Path
from typing import Any

import pytest

from apply import ops
from apply.facts import FileInfo, Sysctl
from apply.redact import MASK
from apply.runner import ApplyError, Host, OpResult, Put, idempotence_gate
from apply.testing import FakeConnection, fake_host
from tests.support.ssh_server import ExecServer


@pytest.fixture
def lock_dir(tmp_path: Path) -> Path:
    return tmp_path / "locks"


def test_run_passes_fabric_options_and_returns_result(lock_dir: Path) -> None:
    conn = FakeConnection({"uname -r": (0, "6.1.0\n", "")})
    result = fake_host(conn, lock_dir=lock_dir).run("uname -r", timeout=5)
    assert result.ok and result.stdout == "6.1.0\n" and result.exit_code == 0
    kwargs = conn.run_kwargs[0]
    assert kwargs["hide"] is True and kwargs["warn"] is True
    assert kwargs["in_stream"] is False and kwargs["timeout"] == 5


def test_run_stdin_is_streamed_not_interpolated(lock_dir: Path) -> None:
    conn = FakeConnection()
    fake_host(conn, lock_dir=lock_dir).run("cat > /x", stdin="data")
    assert conn.commands == ["cat > /x"]
    assert conn.run_kwargs[0]["in_stream"].read() == "data"


def test_run_failure_raises_redacted_apply_error(lock_dir: Path) -> None:
    conn = FakeConnection({re.compile(r"login .*"): (3, "", "bad password=hunter22 for s3cr3t-user\n")})
    host = fake_host(conn, lock_dir=lock_dir, secrets=["s3cr3t-user"])
    with pytest.raises(ApplyError) as info:
        host.run("login s3cr3t-user per-call-secret", secrets=["per-call-secret"])
    message = str(info.value)
    assert "exit code 3" in message
    for leaked in ("hunter22", "s3cr3t-user", "per-call-secret"):
        assert leaked not in message
    assert MASK in message
    assert info.value.result is not None and info.value.result.exit_code == 3


def test_run_check_false_returns_failure(lock_dir: Path) -> None:
    conn = FakeConnection({"false": (1, "", "")})
    assert fake_host(conn, lock_dir=lock_dir).run("false", check=False).exit_code == 1


def test_connection_error_becomes_apply_error(lock_dir: Path) -> None:
    class Broken(FakeConnection):
        def run(self, command: str, **kwargs: object) -> object:
            self.is_connected = False
            raise ConnectionResetError("reset by peer")

    with pytest.raises(ApplyError, match=r"\[fake\] connection failed.*reset by peer"):
        fake_host(Broken(), lock_dir=lock_dir).run("true")


def test_invalid_mode_is_an_early_clear_error() -> None:
    with pytest.raises(ValueError, match="mode 'dry' is not one of apply, check, verify"):
        Host("h", FakeConnection(), mode="dry")  # type: ignore[arg-type]


def test_fact_is_cached_until_a_change(lock_dir: Path) -> None:
    fact = Sysctl("net.ipv4.ip_forward")
    conn = FakeConnection({fact.command: (0, "present\n0\n", "")})
    host = fake_host(conn, lock_dir=lock_dir)
    assert host.fact(fact) == "0"
    assert host.fact(Sysctl("net.ipv4.ip_forward")) == "0"
    assert conn.commands.count(fact.command) == 1
    host.execute("set it", ["sysctl -w net.ipv4.ip_forward=1"])
    host.fact(fact)
    assert conn.commands.count(fact.command) == 2


def test_fact_read_failure_names_the_fact(lock_dir: Path) -> None:
    fact = FileInfo("/etc/x")
    conn = FakeConnection({fact.command: (1, "", "stat: permission denied")})
    with pytest.raises(ApplyError, match=r"reading fact FileInfo\(path='/etc/x'\) failed.*permission denied"):
        fake_host(conn, lock_dir=lock_dir).fact(fact)


def test_execute_apply_runs_commands_and_derives_changed(lock_dir: Path) -> None:
    conn = FakeConnection()
    host = fake_host(conn, lock_dir=lock_dir)
    result = host.execute("op", ["a", "b"], diff="d")
    assert result == OpResult("op", True, ["a", "b"], "d", "changed")
    assert conn.commands == ["a", "b"]
    assert host.changes == [result]
    unchanged = host.execute("op2", [])
    assert not unchanged.changed and unchanged.reason == "already in the desired state"
    assert host.changes == [result] and host.results == [result, unchanged]


def test_execute_check_mode_records_and_runs_nothing(lock_dir: Path) -> None:
    conn = FakeConnection()
    host = fake_host(conn, lock_dir=lock_dir, mode="check")
    result = host.execute("op", ["touch /x"], diff="+x")
    assert result.changed and result.commands == ["touch /x"] and result.diff == "+x"
    assert conn.commands == []


def test_execute_verify_mode_runs_nothing(lock_dir: Path) -> None:
    conn = FakeConnection()
    host = fake_host(conn, lock_dir=lock_dir, mode="verify")
    result = host.execute("op", ["touch /x"])
    assert not result.changed and result.reason == "verify-only"
    assert conn.commands == []


def test_execute_failure_raises_and_stops(lock_dir: Path) -> None:
    conn = FakeConnection({"b": (2, "", "boom")})
    host = fake_host(conn, lock_dir=lock_dir)
    with pytest.raises(ApplyError, match="boom"):
        host.execute("op", ["a", "b", "c"])
    assert conn.commands == ["a", "b"]


def test_execute_redacts_recorded_commands_and_diff(lock_dir: Path) -> None:
    host = fake_host(FakeConnection(), lock_dir=lock_dir, mode="check")
    commands = ["mysql --password=letmein1", "echo tok-9999"]
    result = host.execute("op", commands, diff="+tok-9999", secrets=["tok-9999"])
    assert "letmein1" not in str(result) and "tok-9999" not in str(result)


def test_put_is_check_validate_swap(lock_dir: Path) -> None:
    conn = FakeConnection(files={"/etc/app.conf": b"old"})
    host = fake_host(conn, lock_dir=lock_dir)
    host.put("/etc/app.conf", "new", mode="0600", owner="app", group="adm", validate="app -t {path}")
    tmp = "/etc/.app.conf.hvs-tmp1"
    assert conn.commands == [
        "mktemp /etc/.app.conf.hvs-XXXXXXXX",
        f"chown app:adm {tmp} && chmod 0600 {tmp}",
        f"app -t {tmp}",
        f"mv -f -- {tmp} /etc/app.conf",
    ]
    assert conn.files == {"/etc/app.conf": b"new"}


def test_put_rejected_by_validate_leaves_old_file(lock_dir: Path) -> None:
    rejects = {re.compile(r"app -t .*"): (1, "", "line 3: syntax error")}
    conn = FakeConnection(rejects, files={"/etc/a": b"old"})
    host = fake_host(conn, lock_dir=lock_dir)
    with pytest.raises(ApplyError, match=r"(?s)new /etc/a rejected.*old file is untouched.*syntax error"):
        host.put("/etc/a", "bad", validate="app -t {path}")
    assert conn.files == {"/etc/a": b"old"}
    assert conn.commands[-1] == "rm -f -- /etc/.a.hvs-tmp1"
    assert not any(command.startswith("mv ") for command in conn.commands)


def test_put_refused_outside_apply_mode(lock_dir: Path) -> None:
    conn = FakeConnection()
    with pytest.raises(ApplyError, match="refused in check mode"):
        fake_host(conn, lock_dir=lock_dir, mode="check").put("/etc/a", "x")
    assert conn.commands == [] and conn.uploads == []


@pytest.mark.parametrize("path", ["relative/path", "/etc/a\nb"])
def test_put_rejects_bad_path(lock_dir: Path, path: str) -> None:
    with pytest.raises(ValueError, match="remote path"):
        fake_host(lock_dir=lock_dir).put(path, "x")


def test_read(lock_dir: Path) -> None:
    conn = FakeConnection(files={"/etc/a": b"\x00bin"})
    host = fake_host(conn, lock_dir=lock_dir)
    assert host.read("/etc/a") == b"\x00bin"
    assert host.read("/etc/missing") is None
    # Reads go over SFTP: nothing on the command log (and nothing in Allure).
    assert conn.commands == []


def test_put_command_str_hides_content() -> None:
    text = str(Put("/etc/key", b"-----BEGIN PRIVATE KEY-----secret", "0600"))
    assert "secret" not in text and "0600" in text and "/etc/key" in text


def test_step_log_collects_results(lock_dir: Path) -> None:
    host = fake_host(lock_dir=lock_dir)
    with host.step("outer") as outer:
        host.execute("a", [])
        with host.step("inner") as inner:
            host.execute("b", ["true"])
    assert [r.op for r in outer.results] == ["a", "b"] and outer.changed
    assert [r.op for r in inner.results] == ["b"]
    with host.step("quiet") as quiet:
        host.execute("c", [])
    assert not quiet.changed


def test_fresh_opens_a_new_connection_and_logs_in(lock_dir: Path) -> None:
    conn = FakeConnection()
    host = fake_host(conn, lock_dir=lock_dir)
    new = host.fresh()
    assert new.connection is not conn
    assert new.connection.commands == ["true"]  # type: ignore[attr-defined]
    assert conn.commands == []


def test_fresh_login_failure_is_an_apply_error(lock_dir: Path) -> None:
    def connect() -> FakeConnection:
        return FakeConnection({"true": (255, "", "Permission denied (publickey)")})

    host = Host("h", FakeConnection(), lock_dir=lock_dir, connect=connect)
    with pytest.raises(ApplyError, match="publickey"):
        host.fresh()


def test_a_refused_new_login_is_an_apply_error_not_a_crash(lock_dir: Path) -> None:
    import paramiko

    def connect() -> FakeConnection:
        raise paramiko.AuthenticationException("Authentication failed.")

    host = Host("h", FakeConnection(), lock_dir=lock_dir, connect=connect)
    with pytest.raises(ApplyError, match=r"\[h\] a new SSH login failed: AuthenticationException"):
        host.fresh()


def test_idempotence_gate_lists_ops_that_would_change(lock_dir: Path) -> None:
    conn = FakeConnection(
        {FileInfo("/etc/a").command: (0, "regular file|root|root|644|1\n", "")},
        files={"/etc/a": b"x"},
    )
    host = fake_host(conn, name="web1", lock_dir=lock_dir)

    def apply(h: Host) -> None:
        ops.file(h, "/etc/a", "x")
        ops.file(h, "/etc/a", "y")

    assert idempotence_gate(host, apply) == ["[web1] => file /etc/a"]
    # Check mode: the gate changed nothing, and the apply host's record is untouched.
    assert conn.uploads == [] and host.results == []


def test_lock_name_is_validated(lock_dir: Path) -> None:
    with pytest.raises(ValueError, match="lock name"), fake_host(lock_dir=lock_dir).lock("../etc"):
        pass


def test_lock_is_reentrant(lock_dir: Path) -> None:
    host = fake_host(lock_dir=lock_dir)
    with host.lock("apt"), host.lock("apt"):
        pass
    assert (lock_dir / "fake.apt.lock").exists()


def _hold(lock_dir: str, use_lock: bool, barrier: Any, queue: Any) -> None:
    host = Host("target", FakeConnection(), lock_dir=lock_dir)
    barrier.wait()
    for _ in range(3):
        if use_lock:
            with host.lock("apt"):
                start = time.monotonic()
                time.sleep(0.1)
                queue.put((start, time.monotonic()))
        else:
            start = time.monotonic()
            time.sleep(0.1)
            queue.put((start, time.monotonic()))


def _overlap(lock_dir: Path, use_lock: bool) -> float:
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    queue = context.Queue()
    args = (str(lock_dir), use_lock, barrier, queue)
    workers = [context.Process(target=_hold, args=args) for _ in range(2)]
    for worker in workers:
        worker.start()
    intervals = [queue.get(timeout=20) for _ in range(6)]
    for worker in workers:
        worker.join(timeout=20)
        assert worker.exitcode == 0
    intervals.sort()
    total = 0.0
    for (_, end), (next_start, _) in itertools.pairwise(intervals):
        total += max(0.0, end - next_start)
    return total


def test_host_lock_serializes_across_processes(lock_dir: Path) -> None:
    # The same measurement without the lock must see overlap, or it could not fail.
    assert _overlap(lock_dir, use_lock=False) > 0.05
    assert _overlap(lock_dir, use_lock=True) == 0.0


def test_allure_step_and_attachments_are_redacted(lock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import apply.runner as runner

    titles: list[str] = []
    attached: list[tuple[str, str]] = []

    class RecordingStep:
        def __init__(self, title: str) -> None:
            titles.append(title)

        def __enter__(self) -> None:
            return None

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(runner.allure, "step", RecordingStep)
    monkeypatch.setattr(
        runner.allure, "attach", lambda body, name, attachment_type: attached.append((name, body))
    )
    conn = FakeConnection(
        {re.compile("curl .*"): (0, "token=abc-123-xyz\n", "Authorization: Bearer zzz999\n")}
    )
    host = fake_host(conn, lock_dir=lock_dir, secrets=["hostsecret"])
    host.run("curl -u admin:hostsecret https://10.0.0.1/ --key-pass perkey99", secrets=["perkey99"])
    assert titles == [f"[fake] $ curl -u admin:{MASK} https://10.0.0.1/ --key-pass {MASK}"]
    names = [name for name, _ in attached]
    assert names == ["exit code", "stdout", "stderr"]
    everything = " ".join(titles) + " ".join(body for _, body in attached)
    for leaked in ("hostsecret", "perkey99", "abc-123-xyz", "zzz999"):
        assert leaked not in everything


# -- a real fabric connection, against an in-process paramiko SSH server ------------------


@pytest.fixture
def ssh_host(lock_dir: Path) -> Any:
    from fabric import Config, Connection

    server = ExecServer()
    connection = Connection(
        "127.0.0.1",
        user="tester",
        port=server.port,
        config=Config(overrides={"load_ssh_configs": False}),
        connect_kwargs={"password": "x", "look_for_keys": False, "allow_agent": False},
    )
    host = Host("local", connection, lock_dir=lock_dir)
    try:
        yield host
    finally:
        host.close()
        server.close()


def test_fabric_run_exit_codes_output_and_nodelay(ssh_host: Host) -> None:
    import socket

    result = ssh_host.run("say out err 7", check=False)
    assert (result.exit_code, result.stdout, result.stderr) == (7, "out", "err")
    for code in (0, 1, 255):
        assert ssh_host.run(f"exit {code}", check=False).exit_code == code
    # paramiko leaves Nagle on: every small SSH message then waits ~40 ms for a delayed ACK.
    sock = ssh_host.connection.transport.sock  # type: ignore[attr-defined]
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_fabric_run_streams_stdin_in_chunks(ssh_host: Host) -> None:
    data = "0123456789abcdef\n" * 20000  # 340 kB: invoke alone sends one character per 10 ms
    started = time.monotonic()
    assert ssh_host.run("cat", stdin=data).stdout == data
    assert time.monotonic() - started < 10


def test_fabric_run_times_out(ssh_host: Host) -> None:
    for _ in range(3):  # the timer's kill and the wake-up race; a timeout must never pass
        started = time.monotonic()
        with pytest.raises(ApplyError, match="CommandTimedOut running 'hang'"):
            ssh_host.run("hang", timeout=0.3, check=False)
        assert time.monotonic() - started < 5
    assert ssh_host.run("exit 0").ok
