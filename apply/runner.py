"""The runner: one host, one reused SSH connection, three modes.

Operations (``apply.ops``) read facts, compare them with the desired state and hand the
runner the commands for what differs. The runner executes them (mode ``apply``), records
what would run (mode ``check``), or is never asked (mode ``verify``: ops return before
reading anything). "Changed" is derived here - at least one command ran or would run -
never set by an op.

Every remote command is an Allure step titled with the command, its exit code, stdout and
stderr attached; everything logged, attached or raised passes through the host's
:class:`~apply.redact.Redactor`. ``allure`` without the pytest plugin is inert, so this
module stays pytest-free.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import posixpath
import re
import shlex
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import allure
import filelock

from apply.redact import Redactor
from transport.hostkeys import HostKeyError
from transport.ssh import (
    CONNECTION_ERRORS,
    Backoff,
    ConnectionDropped,
    login_session,
    reconnect,
    stop_session_command,
)

if TYPE_CHECKING:
    from apply.facts import Fact

Mode = Literal["apply", "check", "verify"]
MODES: tuple[Mode, ...] = ("apply", "check", "verify")

# Host-wide resources serialized across xdist workers and the controller.
HOST_LOCKS = ("apt", "firewall", "systemd")

# Generous: a parallel team's apt-get install of a large package set can take minutes.
DEFAULT_LOCK_TIMEOUT = 1800.0
DEFAULT_COMMAND_TIMEOUT = 900.0
# The targets plugin passes a lock_dir shared by the controller and its workers; this
# default only serves direct use of the toolkit.
DEFAULT_LOCK_DIR = Path(tempfile.gettempdir()) / "hvsuite-locks"
_TITLE_LIMIT = 200
_ATTACH_LIMIT = 64 * 1024

T = TypeVar("T")


class ApplyError(Exception):
    """An apply step failed on the host. The message is redacted before it is stored."""

    def __init__(self, message: str, result: CommandResult | None = None) -> None:
        super().__init__(message)
        self.result = result


class ConnectionLost(ApplyError):
    """The connection dropped while an op's commands ran, so a command may have half-run.
    The host has reconnected; the step that issued the op is run again from its facts
    (``apply.api.step``), never by repeating the command blindly."""


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_code: int
    stdout: str
    stderr: str
    duration: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class OpResult:
    """What one operation did (or, in check mode, would do) on one host."""

    op: str
    changed: bool
    commands: list[str] = field(default_factory=list)
    diff: str | None = None
    reason: str = ""


class Connection(Protocol):
    """The part of ``fabric.Connection`` the runner uses; ``apply.testing.FakeConnection``
    implements the same."""

    def run(self, command: str, **kwargs: Any) -> Any: ...

    def put(self, local: Any, remote: str) -> Any: ...

    def get(self, remote: str, local: Any) -> Any: ...


@dataclass(frozen=True)
class Put:
    """An atomic file write, as one command of an op (check, validate, swap)."""

    path: str
    data: bytes
    mode: str = "0644"
    owner: str = "root"
    group: str = "root"
    validate: str | None = None

    def __str__(self) -> str:
        digest = hashlib.sha256(self.data).hexdigest()[:12]
        text = (
            f"put {self.path} ({len(self.data)} bytes, sha256 {digest}…, "
            f"{self.mode} {self.owner}:{self.group})"
        )
        return text + (f" validated by {self.validate!r}" if self.validate else "")


Command = str | Put


@dataclass
class StepLog:
    """Results of the ops that ran inside one ``Host.step`` block."""

    title: str
    results: list[OpResult] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(result.changed for result in self.results)


def _check_mode(mode: str) -> Mode:
    if mode not in MODES:
        choices = ", ".join(MODES)
        raise ValueError(f"mode {mode!r} is not one of {choices} (set it with --check/--verify-only)")
    return mode  # type: ignore[return-value]


def check_path(path: str) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"remote path {path!r} must be absolute (start with '/')")
    if "\n" in path or "\0" in path:
        raise ValueError(f"remote path {path!r} contains a newline or NUL")
    return posixpath.normpath(path)


def check_file_mode(mode: str) -> str:
    if not re.fullmatch(r"0?[0-7]{3,4}", mode):
        raise ValueError(f"file mode {mode!r} must be octal like '0644'")
    return mode


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Host:
    """One target host reached over one reused connection.

    ``connection`` is a ``fabric.Connection`` (or a fake with the same ``run``/``put``/
    ``get``). ``connect`` builds a brand-new connection with the same parameters for
    :meth:`fresh`; without it a fabric connection is cloned from its own attributes.
    """

    def __init__(
        self,
        name: str,
        connection: Connection,
        *,
        mode: Mode = "apply",
        lock_dir: Path | str | None = None,
        redactor: Redactor | None = None,
        connect: Callable[[], Connection] | None = None,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        backoff: Backoff | None = None,
        report: bool = True,
    ) -> None:
        if not name:
            raise ValueError("Host name must not be empty (it names the host in logs and lock files)")
        self.name = name
        self.connection = connection
        self.mode: Mode = _check_mode(mode)
        self.lock_dir = Path(lock_dir) if lock_dir is not None else DEFAULT_LOCK_DIR
        self.redactor = redactor if redactor is not None else Redactor()
        self.lock_timeout = lock_timeout
        self.command_timeout = command_timeout
        self._connect = connect
        self.backoff = backoff or Backoff()
        # Each command and reconnect an Allure step; False outside a test or fixture (at the end
        # of a run), where Allure has nothing to attach them to.
        self.report = report
        # Reconnects after a dropped connection (for the report), and whether op commands run.
        self.reconnects = 0
        # The connection's login session, whose processes a reconnect stops (None: unknown).
        self._session = login_session(getattr(connection, "client", None))
        self._op_depth = 0
        # Ops that changed in an earlier attempt of the step being re-run after a drop: they
        # still count as changed (a restart that depends on them must happen), once.
        self.carried_changes: set[str] = set()
        self._facts: dict[Fact[Any], Any] = {}
        self._locks: dict[str, filelock.BaseFileLock] = {}
        self._steps: list[StepLog] = []
        self.results: list[OpResult] = []

    def __repr__(self) -> str:
        return f"Host({self.name!r}, mode={self.mode!r})"

    # -- results ---------------------------------------------------------------------

    @property
    def changes(self) -> list[OpResult]:
        """Ops that changed (or, in check mode, would change) something, in order."""
        return [result for result in self.results if result.changed]

    def record(self, result: OpResult) -> OpResult:
        self.results.append(result)
        for step in self._steps:
            step.results.append(result)
        return result

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[StepLog]:
        """Group ops under one title (an Allure step); the log tells whether any changed."""
        log = StepLog(title)
        self._steps.append(log)
        try:
            with self._allure_step(self.redactor.redact(title)):
                yield log
        finally:
            self._steps.remove(log)

    def _allure_step(self, title: str) -> contextlib.AbstractContextManager[Any]:
        return allure.step(title) if self.report else contextlib.nullcontext()

    # -- commands --------------------------------------------------------------------

    def run(
        self,
        command: str,
        *,
        check: bool = True,
        timeout: float | None = None,
        stdin: str | None = None,
        secrets: Iterable[str] = (),
    ) -> CommandResult:
        """Run a command on the host in every mode (reads, verification).

        Output is attached to an Allure step, redacted with the host's secrets plus
        ``secrets``. ``check=True`` raises :class:`ApplyError` on a non-zero exit.
        """
        redactor = self.redactor.extended(secrets)
        title = f"[{self.name}] $ {_truncate(redactor.redact(command), _TITLE_LIMIT)}"
        with self._allure_step(title):
            result = self._exec(command, timeout=timeout, stdin=stdin, redactor=redactor)
            if self.report:
                allure.attach(
                    f"exit code: {result.exit_code}\nduration: {result.duration:.3f}s\n",
                    name="exit code",
                    attachment_type=allure.attachment_type.TEXT,
                )
                for name, output in (("stdout", result.stdout), ("stderr", result.stderr)):
                    if output:
                        allure.attach(
                            _truncate(redactor.redact(output), _ATTACH_LIMIT),
                            name=name,
                            attachment_type=allure.attachment_type.TEXT,
                        )
        if check and not result.ok:
            raise ApplyError(
                redactor.redact(
                    f"[{self.name}] command failed with exit code {result.exit_code}: {command}\n"
                    f"{_truncate(result.stderr.strip() or result.stdout.strip(), 4000)}"
                ),
                result,
            )
        return result

    def _exec(
        self, command: str, *, timeout: float | None, stdin: str | None, redactor: Redactor
    ) -> CommandResult:
        kwargs: dict[str, Any] = {
            "hide": True,
            "warn": True,
            "in_stream": io.StringIO(stdin) if stdin is not None else False,
            "timeout": timeout if timeout is not None else self.command_timeout,
        }
        for attempt in (1, 2):
            started = time.monotonic()
            self._reopen_if_dropped()
            try:
                _prepare(self.connection)
                raw = self.connection.run(command, **kwargs)
            except HostKeyError as exc:
                raise ApplyError(f"[{self.name}] {exc}") from exc
            except Exception as exc:
                if attempt == 1 and self._survive_drop(command, exc):
                    continue
                # invoke's CommandTimedOut and paramiko's SSHException carry no common base
                # worth importing here; name what failed and keep the cause chained.
                raise ApplyError(
                    redactor.redact(f"[{self.name}] {type(exc).__name__} running {command!r}: {exc}")
                ) from exc
            # A drop mid-command closes the channel: invoke then reports exit -1 (or none).
            no_status = raw.exited is None or int(raw.exited) < 0
            if no_status and attempt == 1 and self._survive_drop(command, ConnectionError("no exit status")):
                continue
            return CommandResult(
                command=command,
                exit_code=-1 if raw.exited is None else int(raw.exited),
                stdout=raw.stdout or "",
                stderr=raw.stderr or "",
                duration=time.monotonic() - started,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _reopen_if_dropped(self) -> None:
        """A connection that dropped between commands is reopened through ``connect`` (the
        host key checked again, the reconnect counted) before anything is sent; fabric would
        otherwise reopen it silently. Nothing ran on it, so nothing needs repeating."""
        was_open = getattr(self.connection, "transport", None) is not None
        if self._connect is None or not was_open or getattr(self.connection, "is_connected", True):
            return
        self._reconnect(ConnectionError("the connection had dropped"), "reopen")

    def _reconnect(self, exc: BaseException, what: str) -> None:
        assert self._connect is not None
        title = f"[{self.name}] reconnect after a dropped connection ({type(exc).__name__}: {exc})"
        with contextlib.suppress(Exception):
            self.connection.close()
        dropped_session = self._session
        try:
            with self._allure_step(self.redactor.redact(_truncate(title, _TITLE_LIMIT))):
                self.connection = reconnect(self.name, self._connect, self.backoff)
                self._session = login_session(getattr(self.connection, "client", None))
                if dropped_session is not None and not self._op_depth:
                    # A cut-off read still running stops first; a cut-off change is left to
                    # finish (killing dpkg half-way is worse), and its step runs again from facts.
                    self.connection.run(
                        stop_session_command(dropped_session), hide=True, warn=True, in_stream=False
                    )
        except ConnectionDropped as dropped:
            raise ApplyError(self.redactor.redact(f"{dropped} (while running {what!r})")) from dropped
        except HostKeyError as refused:
            raise ApplyError(f"[{self.name}] reconnecting after a drop: {refused}") from exc
        except CONNECTION_ERRORS as refused:
            # Not retried (an authentication failure): the host answers but will not let us in.
            message = f"[{self.name}] reconnecting after a drop: {type(refused).__name__}: {refused}"
            raise ApplyError(self.redactor.redact(message)) from exc
        self.invalidate_facts()
        self.reconnects += 1

    def _connection_alive(self) -> bool:
        # paramiko's reader thread marks the transport inactive a moment after the socket
        # fails; the command's own thread may see the error first.
        for _ in range(5):
            if not getattr(self.connection, "is_connected", True):
                return False
            time.sleep(0.1)
        return True

    def _survive_drop(self, what: str, exc: BaseException) -> bool:
        """After ``exc``: False when the connection is still up (a real error). Otherwise
        reconnect (bounded, host key checked again) and return True so a read is run again;
        inside an op's commands raise :class:`ConnectionLost` instead, since the command may
        have half-run: the step that issued it is re-run from its facts."""
        if self._connection_alive():
            return False
        if self._connect is None:
            raise ApplyError(self.redactor.redact(f"[{self.name}] connection failed running {what!r}: {exc}"))
        self._reconnect(exc, what)
        if self._op_depth:
            raise ConnectionLost(
                self.redactor.redact(
                    f"[{self.name}] the connection dropped while an op ran {what!r} ({exc}); reconnected"
                )
            )
        return True

    # -- facts -----------------------------------------------------------------------

    def fact(self, fact: Fact[T]) -> T:
        """The fact's value, read once and cached until the next change on this host."""
        if fact in self._facts:
            return self._facts[fact]
        result = self.run(fact.command, check=False)
        if result.exit_code not in fact.ok_exit_codes:
            raise ApplyError(
                self.redactor.redact(
                    f"[{self.name}] reading fact {fact!r} failed (exit {result.exit_code}): "
                    f"{_truncate(result.stderr.strip(), 2000)}"
                ),
                result,
            )
        try:
            value = fact.parse(result.stdout)
        except ValueError as exc:
            message = f"[{self.name}] cannot parse fact {fact!r}: {exc}"
            raise ApplyError(self.redactor.redact(message)) from exc
        self._facts[fact] = value
        return value

    def invalidate_facts(self) -> None:
        self._facts.clear()

    # -- files -----------------------------------------------------------------------

    def read(self, path: str) -> bytes | None:
        """The content of a remote file (over SFTP, never logged), or None if it is absent."""
        path = check_path(path)
        for attempt in (1, 2):
            buffer = io.BytesIO()
            self._reopen_if_dropped()
            try:
                _prepare(self.connection)
                self.connection.get(path, local=buffer)
            except FileNotFoundError:
                return None
            except (OSError, EOFError) as exc:
                if attempt == 1 and self._survive_drop(f"read {path}", exc):
                    continue
                raise ApplyError(self.redactor.redact(f"[{self.name}] cannot read {path}: {exc}")) from exc
            return buffer.getvalue()
        raise AssertionError("unreachable")  # pragma: no cover

    def put(
        self,
        path: str,
        data: bytes | str,
        *,
        mode: str = "0644",
        owner: str = "root",
        group: str = "root",
        validate: str | None = None,
    ) -> None:
        """Write a file atomically: a private temp file beside ``path``, owner and mode set,
        ``validate`` (a command with ``{path}``) run against it, then ``mv`` into place.

        A primitive that always writes: idempotent callers use ``apply.ops.file``. Refused
        outside apply mode, since --check and --verify-only promise to change nothing.
        """
        if self.mode != "apply":
            raise ApplyError(f"[{self.name}] put {path} refused in {self.mode} mode (use apply.ops.file)")
        # Its mktemp and mv must not be repeated blindly after a drop, like an op's commands.
        self._op_depth += 1
        try:
            self._put(Put(check_path(path), _as_bytes(data), check_file_mode(mode), owner, group, validate))
        finally:
            self._op_depth -= 1

    def _put(self, put: Put) -> None:
        directory, base = posixpath.split(put.path)
        # mktemp creates the file 0600 before any content arrives; SFTP keeps that mode.
        template = posixpath.join(directory, f".{base}.hvs-XXXXXXXX")
        tmp = self.run(f"mktemp {shlex.quote(template)}").stdout.strip()
        if not tmp.startswith(directory):
            raise ApplyError(f"[{self.name}] mktemp returned an unexpected path {tmp!r}")
        qtmp = shlex.quote(tmp)
        try:
            with self._allure_step(f"[{self.name}] upload {put.path} ({len(put.data)} bytes)"):
                try:
                    self._reopen_if_dropped()
                    _prepare(self.connection)
                    self.connection.put(io.BytesIO(put.data), remote=tmp)
                except (OSError, EOFError) as exc:
                    self._survive_drop(f"upload {put.path}", exc)
                    message = f"[{self.name}] upload to {tmp} failed: {exc}"
                    raise ApplyError(self.redactor.redact(message)) from exc
            self.run(f"chown {shlex.quote(f'{put.owner}:{put.group}')} {qtmp} && chmod {put.mode} {qtmp}")
            if put.validate:
                result = self.run(put.validate.format(path=qtmp), check=False)
                if not result.ok:
                    raise ApplyError(
                        self.redactor.redact(
                            f"[{self.name}] new {put.path} rejected by {put.validate!r} "
                            f"(exit {result.exit_code}); the old file is untouched:\n"
                            f"{_truncate((result.stderr or result.stdout).strip(), 4000)}"
                        ),
                        result,
                    )
            self.run(f"mv -f -- {qtmp} {shlex.quote(put.path)}")
        except BaseException:
            self.run(f"rm -f -- {qtmp}", check=False)
            raise

    # -- operations ------------------------------------------------------------------

    def execute(
        self,
        op: str,
        commands: Sequence[Command],
        *,
        diff: str | None = None,
        lock: str | None = None,
        reason: str = "",
        secrets: Iterable[str] = (),
    ) -> OpResult:
        """Run an op's commands (apply), or record them (check). No commands: unchanged.

        ``lock`` names a host-wide resource ("apt", "firewall", "systemd") held while the
        commands run. Facts are invalidated after any command ran. ``secrets`` are masked
        in the recorded commands and in the commands' logged output.
        """
        if self.mode == "verify":
            return self.record(OpResult(op, False, [], None, "verify-only"))
        secrets = tuple(secrets)
        redactor = self.redactor.extended(secrets)
        op = redactor.redact(op)
        shown = [redactor.redact(str(command)) for command in commands]
        redacted_diff = redactor.redact(diff) if diff else None
        if not commands:
            if op in self.carried_changes:
                return OpResult(op, True, [], None, "changed before the connection dropped")
            return self.record(OpResult(op, False, [], None, reason or "already in the desired state"))
        if self.mode == "check":
            reason = reason or "would change (check mode)"
            return self.record(OpResult(op, True, shown, redacted_diff, reason))
        with self.lock(lock) if lock else contextlib.nullcontext():
            self._op_depth += 1
            try:
                for command in commands:
                    if isinstance(command, Put):
                        self._put(command)
                    else:
                        self.run(command, secrets=secrets)
            finally:
                self._op_depth -= 1
                self.invalidate_facts()
        return self.record(OpResult(op, True, shown, redacted_diff, reason or "changed"))

    def unchanged(self, op: str, reason: str) -> OpResult:
        """Record an op that decided to do nothing, with why (verify-only, in desired state)."""
        if op in self.carried_changes:
            return OpResult(op, True, [], None, "changed before the connection dropped")
        return self.record(OpResult(op, False, [], None, reason))

    # -- locks -----------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold a host-wide lock shared by the controller and every xdist worker.

        Re-entrant within one Host; the lock file lives in ``lock_dir`` and is keyed by the
        host name, so two targets never block each other.
        """
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
            raise ValueError(f"lock name {name!r} must be lowercase letters, digits, '-' or '_'")
        lock = self._locks.get(name)
        if lock is None:
            self.lock_dir.mkdir(parents=True, exist_ok=True)
            safe_host = re.sub(r"[^A-Za-z0-9_.-]", "_", self.name)
            lock = filelock.FileLock(
                self.lock_dir / f"{safe_host}.{name}.lock", timeout=self.lock_timeout, poll_interval=0.01
            )
            self._locks[name] = lock
        try:
            lock.acquire()
        except filelock.Timeout as exc:
            raise ApplyError(
                f"[{self.name}] waited {self.lock_timeout:.0f}s for the host-wide {name!r} lock "
                f"({lock.lock_file}); another worker holds it"
            ) from exc
        try:
            yield
        finally:
            lock.release()

    # -- connections -----------------------------------------------------------------

    def _sibling(self, connection: Connection, mode: Mode) -> Host:
        return Host(
            self.name,
            connection,
            mode=mode,
            lock_dir=self.lock_dir,
            redactor=self.redactor,
            connect=self._connect,
            lock_timeout=self.lock_timeout,
            command_timeout=self.command_timeout,
            backoff=self.backoff,
        )

    def with_mode(self, mode: Mode) -> Host:
        """The same host and connection in another mode, with its own results and facts."""
        return self._sibling(self.connection, mode)

    def fresh(self) -> Host:
        """A Host over a brand-new connection with the same parameters, already logged in.

        Used to prove that a new key login still works after SSH or firewall changes;
        failing to log in raises :class:`ApplyError`.
        """
        try:
            connection = self._connect() if self._connect is not None else _clone_connection(self.connection)
        except HostKeyError as exc:
            raise ApplyError(f"[{self.name}] {exc}") from exc
        except CONNECTION_ERRORS as exc:
            # Refused, timed out, authentication failed: the login this proves did not happen.
            raise ApplyError(f"[{self.name}] a new SSH login failed: {type(exc).__name__}: {exc}") from exc
        host = self._sibling(connection, self.mode)
        try:
            host.run("true")
        except BaseException:
            host.close()
            raise
        return host

    def close(self) -> None:
        close = getattr(self.connection, "close", None)
        if close is not None:
            close()


def _prepare(connection: Connection) -> None:
    """Open a fabric connection tuned for many short commands; anything else is left alone.

    Without this, one remote ``true`` took ~45 ms against a local server where the SSH
    exchange itself takes ~2.5 ms:

    - ~35 ms: Nagle's algorithm. paramiko never sets ``TCP_NODELAY``, so each small SSH
      message sent while the previous one is unacknowledged (channel open, exec request)
      waits for the server's delayed ACK (40 ms on Linux). OpenSSH sets it for the same
      reason. Set on the connection's socket (and on a gateway's) once it is open.
    - ~5-10 ms: invoke's ``Runner.wait`` polls for the exit status every ``input_sleep``
      (10 ms). :func:`_event_remote` waits on paramiko's exit-status event instead (and
      streams ``stdin=`` in chunks, not a character per 10 ms); the runner, its output
      threads and its timeout stay invoke's, configured through fabric's
      ``runners.remote`` setting.
    """
    import fabric

    if not isinstance(connection, fabric.Connection):
        return
    runners = connection.config.runners
    if runners.remote is fabric.runners.Remote:
        runners.remote = _event_remote()
    connection.open()  # a no-op once connected; fabric would open it in run/put/get anyway
    hop: Any = connection
    while isinstance(hop, fabric.Connection):
        sock = getattr(hop.transport, "sock", None)
        if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        hop = hop.gateway


_STDIN_CHUNK = 64 * 1024


@functools.cache
def _event_remote() -> type:
    """fabric's ``Remote`` runner, waking on the channel's exit status instead of polling,
    and sending the runner's own ``stdin=`` text in chunks."""
    from fabric.runners import Remote

    class EventRemote(Remote):
        killed = False

        def wait(self) -> None:
            # paramiko sets status_event on exit-status and whenever the channel closes
            # (the timeout timer's kill, a lost transport), so this returns as soon as
            # invoke's own loop would; input_sleep only paces the dead-IO-thread check.
            while not self.channel.status_event.wait(self.input_sleep):
                if self.has_dead_threads:
                    return

        def kill(self) -> None:
            # Called by invoke's timeout timer only. Flag it before the channel closes:
            # wait() now returns while the timer thread may still be inside kill(), and
            # invoke's timed_out (the timer is no longer alive) would then say no.
            self.killed = True
            super().kill()

        @property
        def timed_out(self) -> bool:
            return self.killed or super().timed_out

        def handle_stdin(self, input_: Any, output: Any, echo: Any = None) -> None:
            if not isinstance(input_, io.StringIO):
                super().handle_stdin(input_, output, echo)
                return
            # Host.run's stdin= text. invoke reads a stream without a tty one character
            # per input_sleep (10 ms: 100 bytes/s); send it in chunks, then EOF.
            try:
                while data := input_.read(_STDIN_CHUNK):
                    self.write_proc_stdin(data)
                self.close_proc_stdin()
            except OSError:
                # The command exited (or was killed by the timeout) before reading all
                # of its input: its exit code tells; anything else is a real failure.
                if not self.channel.exit_status_ready():
                    raise

    return EventRemote


def _as_bytes(data: bytes | str) -> bytes:
    return data.encode() if isinstance(data, str) else data


def _clone_connection(connection: Connection) -> Connection:
    fresh = getattr(connection, "fresh", None)
    if not callable(fresh):
        raise TypeError(
            f"cannot open a new connection from {type(connection).__name__}; pass connect= to Host"
        )
    return fresh()


def idempotence_gate(host: Host, apply: Callable[[Host], object]) -> list[str]:
    """Run ``apply`` again in check mode (Molecule's idempotence step) and return
    ``"[host] => op"`` for every op that would still change something (empty = idempotent)."""
    checker = host if host.mode == "check" else host.with_mode("check")
    before = len(checker.results)
    apply(checker)
    return [f"[{host.name}] => {result.op}" for result in checker.results[before:] if result.changed]
