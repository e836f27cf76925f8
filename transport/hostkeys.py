"""Host-key trust: every SSH connection the suite opens checks the server's key against
known_hosts files, as OpenSSH's ``StrictHostKeyChecking=yes`` does.

:class:`KnownHosts` names the files a connection trusts (passed explicitly, never read from
a module-wide list), where an unknown host's key may be recorded (OpenSSH's accept-new), and
the fix to print when a key is refused. :class:`PinnedKeys` is a known_hosts file the suite
writes itself: keys read over a trusted channel (``podman exec`` into a scratch server)
grouped per server name and replaced when the server is recreated.

Only paramiko's public API is used: ``HostKeys.lookup`` (hashed and ``[host]:port`` entries
included), ``SSHClient.load_system_host_keys`` and a ``MissingHostKeyPolicy``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko


class HostKeyError(Exception):
    """The server offered a host key that is not in known_hosts, or differs from it. The
    message names the host, port, key type, SHA256 fingerprint and the fix."""

    def __init__(self, message: str, *, host: str, port: int, key_type: str, fingerprint: str) -> None:
        super().__init__(message)
        self.host = host
        self.port = port
        self.key_type = key_type
        self.fingerprint = fingerprint


def host_key_name(host: str, port: int) -> str:
    """The name known_hosts files use for ``host`` on ``port``."""
    return host if port == 22 else f"[{host}]:{port}"


def split_key_name(name: str) -> tuple[str, int]:
    match = re.fullmatch(r"\[(.+)\]:(\d+)", name)
    return (match.group(1), int(match.group(2))) if match else (name, 22)


def key_fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's fingerprint of a public key: ``SHA256:<base64 without padding>``."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def _short_type(key_type: str) -> str:
    for short in ("ed25519", "ecdsa", "rsa", "dss"):
        if short in key_type:
            return short
    return key_type


def ssh_keyscan_fix(host: str, port: int, record_file: str | Path, key_type: str) -> str:
    """How an operator trusts an ssh target's host key (the default fix in the messages)."""
    return (
        f"Fix: check that fingerprint out of band (on the server: `ssh-keygen -lf "
        f"/etc/ssh/ssh_host_{_short_type(key_type)}_key.pub`), then run `ssh-keyscan -p {port} "
        f"{host} >> {record_file}`; or set `ssh.strict_host_keys = false` in the config to accept "
        "and record the key on first use."
    )


@dataclass(frozen=True)
class KnownHosts:
    """The host keys one connection trusts.

    ``files`` are read in order (a missing file is empty). With ``record_to`` a host that no
    file knows under any key is accepted and its key appended there; a different key for a
    known host is refused all the same. ``fix`` replaces the default advice in messages.
    """

    files: tuple[Path, ...]
    record_to: Path | None = None
    fix: str | None = field(default=None, compare=False)

    @classmethod
    def of(cls, files: Iterable[str | Path], **kwargs: Any) -> KnownHosts:
        return cls(tuple(Path(name).expanduser() for name in files), **kwargs)

    def load(self) -> paramiko.HostKeys:
        known = paramiko.HostKeys()
        for path in self.files:
            if path.is_file():
                known.load(str(path))
        return known

    @property
    def where(self) -> str:
        return ", ".join(str(path) for path in self.files) or "no known_hosts file"

    def check(self, host: str, port: int, key: paramiko.PKey, known: paramiko.HostKeys | None = None) -> None:
        """Accept ``key`` for ``host``:``port`` if an entry holds it; otherwise record it
        (accept-new) or raise :class:`HostKeyError`."""
        known = self.load() if known is None else known
        name = host_key_name(host, port)
        key_type = key.get_name()
        fingerprint = key_fingerprint(key)
        entries = known.lookup(name) or {}
        details = dict(host=host, port=port, key_type=key_type, fingerprint=fingerprint)
        record_file = self.record_to or (self.files[0] if self.files else "~/.ssh/known_hosts")
        expected = entries.get(key_type)
        if expected is not None and expected.asbytes() == key.asbytes():
            return
        if expected is not None:
            raise HostKeyError(
                f"HOST KEY MISMATCH for {host} port {port}: the server offered a {key_type} key "
                f"{fingerprint}, but {self.where} expects {key_fingerprint(expected)} for {name}. "
                "Someone may be intercepting the connection (man-in-the-middle), or the server "
                "was reinstalled. "
                + (
                    self.fix
                    or f"Fix: confirm the new fingerprint out of band, then remove the old entry with "
                    f"`ssh-keygen -R '{name}' -f {record_file}` and add the new one with `ssh-keyscan "
                    f"-p {port} {host} >> {record_file}`."
                ),
                **details,
            )
        if entries:
            other = ", ".join(sorted(entries.keys()))
            raise HostKeyError(
                f"host key of {host} port {port} not trusted: the server offered a {key_type} key "
                f"{fingerprint}, but {self.where} knows {name} only with other key types ({other}). "
                + (self.fix or ssh_keyscan_fix(host, port, record_file, key_type)),
                **details,
            )
        if self.record_to is not None:
            self.record_to.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            line = paramiko.hostkeys.HostKeyEntry([name], key).to_line()
            with open(self.record_to, "a", opener=lambda p, flags: os.open(p, flags, 0o600)) as handle:
                handle.write(line)
            known.add(name, key_type, key)
            return
        raise HostKeyError(
            f"host key of {host} port {port} is unknown: the server offered a {key_type} key "
            f"{fingerprint}, and {self.where} has no entry for {name}. "
            + (self.fix or ssh_keyscan_fix(host, port, record_file, key_type)),
            **details,
        )

    def client(self) -> paramiko.SSHClient:
        """A new ``SSHClient`` that trusts exactly these keys: paramiko prefers a known key
        type, refuses a different key (BadHostKeyException, see :meth:`explain`) and asks
        :meth:`check` about a host it has no key of that type for."""
        client = paramiko.SSHClient()
        for path in self.files:
            if path.is_file():
                client.load_system_host_keys(str(path))
        client.set_missing_host_key_policy(_Policy(self))
        return client

    def explain(self, exc: paramiko.BadHostKeyException, port: int) -> HostKeyError:
        """paramiko's BadHostKeyException as a HostKeyError with this trust's message and fix."""
        host, _ = split_key_name(exc.hostname)
        known = paramiko.HostKeys()
        known.add(host_key_name(host, port), exc.expected_key.get_name(), exc.expected_key)
        try:
            KnownHosts(self.files, None, self.fix).check(host, port, exc.key, known)
        except HostKeyError as error:
            return error
        return HostKeyError(
            str(exc), host=host, port=port, key_type=exc.key.get_name(), fingerprint=key_fingerprint(exc.key)
        )


class _Policy(paramiko.MissingHostKeyPolicy):
    """Called by paramiko when no loaded entry has the offered key's type."""

    def __init__(self, trust: KnownHosts) -> None:
        self.trust = trust

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        host, port = split_key_name(hostname)
        self.trust.check(host, port, key)
        if self.trust.record_to is not None:
            client.get_host_keys().add(hostname, key.get_name(), key)


# Preferred first: paramiko offers the first known key type of a host first.
KEY_TYPE_ORDER = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)


@dataclass(frozen=True)
class PinnedKeys:
    """A known_hosts file the suite writes: each server's lines carry the tag ``TAG<name>``,
    so pinning a server again replaces its previous life's keys (and any other lines left
    for its address). Concurrent writers must serialize around ``pin``/``unpin`` (the
    targets package holds a file lock); the file itself is replaced atomically."""

    path: Path
    TAG = "hvsuite-scratch:"

    def pin(self, name: str, address: str, keys: Sequence[tuple[str, str]], *, port: int = 22) -> None:
        """Replace server ``name``'s lines with ``keys`` ((key type, base64) pairs)."""
        host = host_key_name(address, port) if address else ""
        kept = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                fields = line.split()
                if not fields:
                    continue
                if fields[-1] == self.TAG + name or (host and host in fields[0].split(",")):
                    continue
                kept.append(line)
        for key_type, data in sorted(keys, key=lambda k: KEY_TYPE_ORDER.index(k[0])):
            # Validate before writing: the file must stay loadable by paramiko and OpenSSH.
            try:
                entry = paramiko.hostkeys.HostKeyEntry.from_line(f"{host or 'check'} {key_type} {data}")
            except (paramiko.hostkeys.InvalidHostKey, ValueError):
                entry = None
            if entry is None or len(data.split()) != 1:
                raise ValueError(f"{name}: unreadable host key {key_type} {data[:20]}...")
            kept.append(f"{host} {key_type} {data} {self.TAG}{name}")
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def unpin(self, name: str) -> None:
        """Forget server ``name``'s keys (it was destroyed)."""
        if self.path.exists():
            self.pin(name, "", [])

    @staticmethod
    def parse_public_keys(text: str) -> list[tuple[str, str]]:
        """(key type, base64) of every ``ssh_host_*_key.pub`` line in ``text``."""
        keys = []
        for line in text.splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0] in KEY_TYPE_ORDER:
                keys.append((fields[0], fields[1]))
        return keys
