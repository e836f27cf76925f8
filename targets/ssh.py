"""SSH reachability and facts, with paramiko directly (no fabric: used before any Host exists)."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import paramiko


class _Ignore(paramiko.MissingHostKeyPolicy):
    # Scratch servers get new host keys at every creation on a reused address; real servers
    # are checked against ~/.ssh/known_hosts by the operator's own ssh, not by the suite.
    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        return None


def open_client(address: str, port: int, user: str, key_file: Path, *, timeout: float) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(_Ignore())
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
    address: str, port: int, user: str, key_file: Path, *, timeout: float, command: str = "true"
) -> tuple[float, str, str]:
    """Retry an SSH login running `command` until it exits 0 or `timeout` passes.
    Returns (seconds waited, os, kernel); raises TimeoutError carrying the last error."""
    started = time.monotonic()
    deadline = started + timeout
    last = "no attempt made"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(last)
        try:
            client = open_client(address, port, user, key_file, timeout=max(1.0, min(remaining, 5.0)))
            try:
                code, _out, err = run(client, command, timeout=max(1.0, remaining))
                if code == 0:
                    os_name, kernel = read_facts(client)
                    return time.monotonic() - started, os_name, kernel
                last = f"`{shlex.quote(command)}` exited {code}: {err.strip()}"
            finally:
                client.close()
        except (TimeoutError, OSError, paramiko.SSHException, EOFError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.2)
