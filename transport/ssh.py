"""The one way the suite opens SSH connections: to an :class:`Endpoint` (address, port, user,
key and the :class:`~transport.hostkeys.KnownHosts` it trusts), for fabric (the apply
runner), testinfra (checks), plain paramiko (reachability, facts) and the outside-in probes
(a transport past key exchange, not logged in). Every one checks the host key.

A dropped connection is reconnected here with bounded attempts and backoff, host key checked
again (:func:`reconnect`); whether the interrupted command may simply run again is for the
caller to decide (see ``apply.runner.Host``).
"""

from __future__ import annotations

import contextlib
import functools
import shlex
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import paramiko

from transport.hostkeys import HostKeyError, KnownHosts, host_key_name

T = TypeVar("T")

# Errors that mean the connection itself is gone (not that a command failed).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, paramiko.SSHException)


@dataclass(frozen=True)
class Endpoint:
    """Everything needed to open an SSH connection to one host."""

    name: str
    address: str
    port: int
    user: str
    key_file: Path
    trust: KnownHosts

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"ssh://{self.user}@{host}:{self.port}"


@dataclass(frozen=True)
class Backoff:
    """Bounded reconnect attempts: ``attempts`` tries, waiting ``first`` seconds, doubling up
    to ``longest``; about 1+2+4+8+8 = 23 s by default, longer than a restarting sshd."""

    attempts: int = 6
    first: float = 1.0
    longest: float = 8.0

    def delays(self) -> Iterator[float]:
        delay = self.first
        for _ in range(self.attempts - 1):
            yield delay
            delay = min(delay * 2, self.longest)


class ConnectionDropped(Exception):
    """Reconnecting failed within the bound: ``host`` (its name) stopped answering, ``cause``
    is the last attempt's error."""

    def __init__(self, message: str, *, host: str = "", cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.host = host
        self.cause = cause

    @property
    def reason(self) -> str:
        cause = self.cause
        return f"{type(cause).__name__}: {cause}" if cause is not None else str(self)


def dropped_in(exc: BaseException | None) -> ConnectionDropped | None:
    """The :class:`ConnectionDropped` behind ``exc`` (itself, or a cause or context of it)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ConnectionDropped):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def reconnect(name: str, connect: Callable[[], T], backoff: Backoff | None = None) -> T:
    """``connect()`` (host ``name``) again until it succeeds or the bound is spent. A host key
    problem is not retried: it fails at once (something else may answer on the address)."""
    backoff = backoff or Backoff()
    last: BaseException | None = None
    delays = backoff.delays()
    while True:
        try:
            return connect()
        except (HostKeyError, paramiko.AuthenticationException):
            # Neither is a dropped connection: a refused key stays refused (and each try would
            # count as a failed login against fail2ban).
            raise
        except CONNECTION_ERRORS as exc:
            last = exc
        delay = next(delays, None)
        if delay is None:
            raise ConnectionDropped(
                f"[{name}] the SSH connection dropped and {backoff.attempts} reconnect attempts "
                f"failed: {type(last).__name__}: {last}",
                host=name,
                cause=last,
            ) from last
        time.sleep(delay)


def open_client(endpoint: Endpoint, *, timeout: float) -> paramiko.SSHClient:
    """A logged-in paramiko client, after checking the server's host key."""
    client = endpoint.trust.client()
    try:
        client.connect(
            endpoint.address,
            port=endpoint.port,
            username=endpoint.user,
            key_filename=str(endpoint.key_file),
            look_for_keys=False,
            allow_agent=False,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
        )
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise endpoint.trust.explain(exc, endpoint.port) from None
    except paramiko.ssh_exception.NoValidConnectionsError as exc:
        client.close()
        # paramiko folds "connection refused" on every address into this error: say it plainly.
        if exc.errors and all(isinstance(e, ConnectionRefusedError) for e in exc.errors.values()):
            raise ConnectionRefusedError(
                f"{endpoint.address} port {endpoint.port} refused the connection"
            ) from exc
        raise
    except BaseException:
        client.close()
        raise
    return client


def run(client: paramiko.SSHClient, command: str, *, timeout: float = 30.0) -> tuple[int, str, str]:
    _stdin, stdout, stderr = client.exec_command(command, timeout=timeout)
    out = stdout.read().decode(errors="replace")
    err = stderr.read().decode(errors="replace")
    return stdout.channel.recv_exit_status(), out, err


# The kernel's audit session of a login (pam_loginuid): every process a connection starts
# inherits it, so what a dropped connection left running on the host can be found and stopped.
_NO_SESSION = "4294967295"


def login_session(client: Any) -> str | None:
    """The audit session id of ``client``'s login (None without one, or for a stand-in)."""
    if not isinstance(client, paramiko.SSHClient) or client.get_transport() is None:
        return None
    try:
        _, out, _ = run(client, "cat /proc/self/sessionid", timeout=10)
    except CONNECTION_ERRORS:
        return None
    value = out.strip()
    return value if value.isdigit() and value != _NO_SESSION else None


def stop_session_command(session: str) -> str:
    """Stops every process of the audit session ``session``: a dropped connection's commands
    keep running on the host, and a command run again must not meet its cut-off twin (a
    repository lock, a busy port). Run on a new connection, whose session differs."""
    if not session.isdigit():
        raise ValueError(f"not a session id: {session!r}")
    return (
        'for p in /proc/[0-9]*; do [ "$(cat "$p/sessionid" 2>/dev/null)" = '
        f'{session} ] && kill "${{p#/proc/}}" 2>/dev/null; done; true'
    )


def read_facts(client: paramiko.SSHClient) -> tuple[str, str]:
    """(PRETTY_NAME from /etc/os-release, kernel release) of the connected server."""
    code, out, _ = run(client, ". /etc/os-release && printf '%s\\n' \"$PRETTY_NAME\"; uname -r")
    lines = out.splitlines()
    if code != 0 or len(lines) < 2:
        return "", ""
    return lines[0], lines[1]


def wait_for_ssh(
    endpoint: Endpoint, *, timeout: float, command: str = "true", retry_refused: bool = True
) -> tuple[float, str, str]:
    """Retry a login running ``command`` until it exits 0 or ``timeout`` passes; returns
    (seconds waited, os, kernel). Raises TimeoutError with the last error, HostKeyError at
    once, and ConnectionRefusedError at once unless ``retry_refused`` (a booting server
    refuses until sshd listens; a running one that refuses will not change its mind)."""
    started = time.monotonic()
    deadline = started + timeout
    last = "no attempt made"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(last)
        try:
            client = open_client(endpoint, timeout=max(1.0, min(remaining, 5.0)))
            try:
                code, _out, err = run(client, command, timeout=max(1.0, remaining))
                if code == 0:
                    os_name, kernel = read_facts(client)
                    return time.monotonic() - started, os_name, kernel
                last = f"`{shlex.quote(command)}` exited {code}: {err.strip()}"
            finally:
                client.close()
        except HostKeyError:
            raise
        except ConnectionRefusedError:
            if not retry_refused:
                raise
            last = f"connection refused on port {endpoint.port}"
        except (TimeoutError, OSError, paramiko.SSHException, EOFError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.2)


def fabric_connection(endpoint: Endpoint, *, timeout: float) -> Any:
    """An open fabric Connection whose client trusts only ``endpoint.trust`` (fabric's own
    client would accept any key). Raises HostKeyError for an unknown or different key."""
    from fabric import Config, Connection

    connection = Connection(
        host=endpoint.address,
        user=endpoint.user,
        port=endpoint.port,
        # The endpoint is already resolved (alias included): ~/.ssh/config must not rewrite it.
        config=Config(overrides={"load_ssh_configs": False}),
        connect_timeout=int(timeout),
        connect_kwargs={"key_filename": str(endpoint.key_file), "look_for_keys": False, "allow_agent": False},
    )
    connection.client = endpoint.trust.client()
    try:
        connection.open()
    except paramiko.BadHostKeyException as exc:
        connection.close()
        raise endpoint.trust.explain(exc, endpoint.port) from None
    except BaseException:
        connection.close()
        raise
    return connection


def checks_host(endpoint: Endpoint, *, timeout: float = 10.0, backoff: Backoff | None = None) -> Any:
    """A testinfra host over paramiko that checks the host key and reconnects (bounded)
    when the connection dropped. Checks are read-only, so a command cut off by the drop is
    run again on the new connection."""
    import testinfra.host

    backend = _testinfra_backend()(
        # testinfra's get_backend strips the scheme; the backend takes the rest.
        endpoint.url.removeprefix("ssh://"),
        endpoint=endpoint,
        backoff=backoff or Backoff(),
        ssh_identity_file=str(endpoint.key_file),
        timeout=int(timeout),
    )
    host = testinfra.host.Host(backend)
    backend.set_host(host)
    return host


@functools.cache
def _testinfra_backend() -> type:
    from testinfra.backend.paramiko import ParamikoBackend

    class EndpointBackend(ParamikoBackend):
        """testinfra's paramiko backend on a resolved endpoint: no ssh config, host keys
        checked, a dropped connection reopened through :func:`reconnect`."""

        def __init__(self, hostspec: str, *, endpoint: Endpoint, backoff: Backoff, **kwargs: Any) -> None:
            self.endpoint = endpoint
            self.backoff = backoff
            # Once the bound is spent the host is gone for this process: later checks fail at
            # once with the same cause instead of waiting out the bound again each.
            self.gone: ConnectionDropped | None = None
            self.session: str | None = None  # the open connection's login session
            super().__init__(hostspec, **kwargs)

        @functools.cached_property
        def client(self) -> paramiko.SSHClient:
            endpoint = self.endpoint
            if self.gone is not None:
                raise ConnectionDropped(str(self.gone), host=self.gone.host, cause=self.gone.cause)
            try:
                client = reconnect(
                    endpoint.name, lambda: open_client(endpoint, timeout=self.timeout), self.backoff
                )
            except ConnectionDropped as exc:
                self.gone = exc
                raise
            self.session = login_session(client)
            return client

        def run(self, command: str, *args: str, **kwargs: Any) -> Any:
            # Checks are read-only: a command cut off by a dropped connection runs again, once,
            # on a new one.
            try:
                result = super().run(command, *args, **kwargs)
            except CONNECTION_ERRORS:
                if self._alive():
                    raise
                return self._run_again(command, *args, **kwargs)
            # A drop mid-command closes the channel without an exit status: paramiko says -1.
            if result.rc == -1 and not self._alive():
                return self._run_again(command, *args, **kwargs)
            return result

        def _run_again(self, command: str, *args: str, **kwargs: Any) -> Any:
            """On a new connection, once the dropped one's processes are stopped."""
            dropped = self.session
            self.close()
            if dropped is not None:
                run(self.client, stop_session_command(dropped))
            return super().run(command, *args, **kwargs)

        def _alive(self) -> bool:
            """Whether the open connection is still up; paramiko's transport thread notices a
            reset socket within moments, so give it those."""
            client = self.__dict__.get("client")
            for _ in range(5):
                transport = client.get_transport() if client is not None else None
                if transport is None or not transport.is_active():
                    return False
                time.sleep(0.1)
            return True

        def close(self) -> None:
            """Close the connection, if one was opened; the next command opens a new one."""
            client = self.__dict__.pop("client", None)
            if client is not None:
                client.close()

    return EndpointBackend


@contextlib.contextmanager
def handshake(endpoint: Endpoint, *, timeout: float) -> Iterator[paramiko.Transport]:
    """A transport past key exchange with a verified host key, not authenticated (for probes
    that ask what the server offers)."""
    known = endpoint.trust.load()
    with socket.create_connection((endpoint.address, endpoint.port), timeout=timeout) as sock:
        transport = paramiko.Transport(sock)
        try:
            transport.banner_timeout = timeout
            _prefer_known_key_types(
                transport, known.lookup(host_key_name(endpoint.address, endpoint.port)) or {}
            )
            transport.start_client(timeout=timeout)
            endpoint.trust.check(endpoint.address, endpoint.port, transport.get_remote_server_key(), known)
            yield transport
        finally:
            transport.close()


def _prefer_known_key_types(transport: paramiko.Transport, entries: Any) -> None:
    # As OpenSSH does: ask for a host key type known for this host first.
    if not entries:
        return
    options = transport.get_security_options()
    offered = list(options.key_types)
    known: list[str] = []
    for key_type in entries:
        names = ["rsa-sha2-512", "rsa-sha2-256", key_type] if key_type == "ssh-rsa" else [key_type]
        known += [name for name in names if name in offered and name not in known]
    options.key_types = known + [name for name in offered if name not in known]


def key_login(endpoint: Endpoint, *, timeout: float = 10.0) -> str:
    """Log in with the key over a brand-new connection and return ``id -un`` (proves access)."""
    client = open_client(endpoint, timeout=timeout)
    try:
        return run(client, "id -un", timeout=timeout)[1].strip()
    finally:
        client.close()
