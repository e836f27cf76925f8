"""SSH reachability and facts, with paramiko directly (no fabric: used before any Host exists).
Host keys are always checked against known_hosts files (steps.runner.pin_host_keys)."""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paramiko

from steps.runner import HostKeyError, explain_bad_host_key, pin_host_keys
from targets import Target


def open_client(
    address: str,
    port: int,
    user: str,
    key_file: Path,
    *,
    timeout: float,
    known_hosts: Sequence[str | Path],
    record_to: str | Path | None = None,
    fix: str | None = None,
) -> paramiko.SSHClient:
    """A logged-in client, after checking the server's host key against `known_hosts`
    (HostKeyError when unknown or different; with `record_to` an unknown host's key is
    accepted and recorded there)."""
    client = paramiko.SSHClient()
    pin_host_keys(client, known_hosts, record_to=record_to, fix=fix)
    try:
        client.connect(
            address,
            port=port,
            username=user,
            key_filename=str(key_file),
            look_for_keys=False,
            allow_agent=False,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
        )
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise explain_bad_host_key(exc, port, known_hosts, fix) from None
    except BaseException:
        client.close()
        raise
    return client


def run(client: paramiko.SSHClient, command: str, *, timeout: float = 30.0) -> tuple[int, str, str]:
    _stdin, stdout, stderr = client.exec_command(command, timeout=timeout)
    out = stdout.read().decode(errors="replace")
    err = stderr.read().decode(errors="replace")
    return stdout.channel.recv_exit_status(), out, err


def read_facts(client: paramiko.SSHClient) -> tuple[str, str]:
    """(PRETTY_NAME from /etc/os-release, kernel release) of the connected server."""
    code, out, _ = run(client, ". /etc/os-release && printf '%s\\n' \"$PRETTY_NAME\"; uname -r")
    lines = out.splitlines()
    if code != 0 or len(lines) < 2:
        return "", ""
    return lines[0], lines[1]


def wait_for_ssh(
    address: str,
    port: int,
    user: str,
    key_file: Path,
    *,
    timeout: float,
    known_hosts: Sequence[str | Path],
    record_to: str | Path | None = None,
    fix: str | None = None,
    command: str = "true",
) -> tuple[float, str, str]:
    """Retry an SSH login running `command` until it exits 0 or `timeout` passes.
    Returns (seconds waited, os, kernel); raises TimeoutError carrying the last error, and
    HostKeyError at once (a wrong host key is not retried)."""
    started = time.monotonic()
    deadline = started + timeout
    last = "no attempt made"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(last)
        try:
            client = open_client(
                address,
                port,
                user,
                key_file,
                timeout=max(1.0, min(remaining, 5.0)),
                known_hosts=known_hosts,
                record_to=record_to,
                fix=fix,
            )
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
        except (TimeoutError, OSError, paramiko.SSHException, EOFError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.2)


def fabric_connection(target: Target, *, timeout: float) -> Any:
    """A fabric Connection to a resolved target, its host key checked against the target's
    known_hosts (fabric's own client would accept any key)."""
    from fabric import Config, Connection

    connection = Connection(
        host=target.address,
        user=target.user,
        port=target.port,
        # The target is already resolved (alias included): do not let ~/.ssh/config rewrite it.
        config=Config(overrides={"load_ssh_configs": False}),
        connect_timeout=int(timeout),
        connect_kwargs={"key_filename": str(target.key_file), "look_for_keys": False, "allow_agent": False},
    )
    pin_host_keys(connection.client, target.known_hosts)
    return connection
