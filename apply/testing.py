"""Steps as data: a fake connection and host for tests, no SSH.

Give the fake the outputs of fact commands (exact strings or regexes), run an op, and
assert on the commands it received::

    conn = FakeConnection({DebPackages().command: (0, "curl\\t7.88\\tii\\n", "")})
    host = fake_host(conn)
    ops.packages(host, ["curl"])
    assert conn.commands == [DebPackages().command]

Importable by every team's tests; no pytest imports.
"""

from __future__ import annotations

import io
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apply.api import Context
from apply.artifacts import ArtifactStore
from apply.facts import Fact
from apply.redact import Redactor
from apply.runner import Host, Mode
from settings.model import Settings
from transport.ssh import Backoff

Response = tuple[int, str, str]
Responder = Response | Callable[[str], Response]


@dataclass
class FakeResult:
    """What ``fabric.Connection.run`` returns, reduced to what the runner reads."""

    command: str
    exited: int
    stdout: str
    stderr: str


class UnexpectedCommand(AssertionError):
    pass


class FakeConnection:
    """Records commands and answers them from a table.

    ``responses`` maps an exact command, or a compiled ``re.Pattern`` matched with
    ``fullmatch``, to ``(exit, stdout, stderr)`` or to a callable of the command returning
    that. Exact entries win over patterns; patterns are tried in insertion order. An
    unknown command gets ``default`` (exit 0, no output) or, with ``strict=True``, raises
    :class:`UnexpectedCommand`. ``files`` is the remote filesystem seen by SFTP
    (``put``/``get``); ``mktemp`` commands are answered automatically.
    """

    def __init__(
        self,
        responses: Mapping[str | re.Pattern[str], Responder] | None = None,
        *,
        files: Mapping[str, bytes] | None = None,
        strict: bool = False,
        default: Response = (0, "", ""),
    ) -> None:
        self.responses: dict[str | re.Pattern[str], Responder] = dict(responses or {})
        self.files: dict[str, bytes] = dict(files or {})
        self.strict = strict
        self.default = default
        self.commands: list[str] = []
        self.uploads: list[tuple[str, bytes]] = []
        self.run_kwargs: list[dict[str, Any]] = []
        self.closed = False
        self.opened = 0
        self.is_connected = True
        # Commands that cut the connection when they run (a dropped SSH connection).
        self.drops: list[re.Pattern[str]] = []
        self._tmp_counter = 0

    def respond(self, command: str | re.Pattern[str], response: Responder) -> None:
        self.responses[command] = response

    def drop_on(self, command: str | re.Pattern[str]) -> None:
        """The next time ``command`` (exact, or a pattern matched with fullmatch) runs, the
        connection drops: the command's output is lost and ``run`` raises EOFError."""
        self.drops.append(command if isinstance(command, re.Pattern) else re.compile(re.escape(command)))

    def set_fact(self, fact: Fact[Any], stdout: str, exit_code: int = 0) -> None:
        """Answer ``fact``'s command with ``stdout``."""
        self.responses[fact.command] = (exit_code, stdout, "")

    def _answer(self, command: str) -> Response:
        responder = self.responses.get(command)
        if responder is None:
            for key, candidate in self.responses.items():
                if isinstance(key, re.Pattern) and key.fullmatch(command):
                    responder = candidate
                    break
        if responder is None:
            mktemp = re.fullmatch(r"mktemp '?(/[^']*)\.hvs-XXXXXXXX'?", command)
            if mktemp:
                self._tmp_counter += 1
                return 0, f"{mktemp.group(1)}.hvs-tmp{self._tmp_counter}\n", ""
            if self._simulate_file_command(command):
                return 0, "", ""
            if self.strict:
                raise UnexpectedCommand(f"no response configured for command: {command}")
            return self.default
        return responder(command) if callable(responder) else responder

    def _simulate_file_command(self, command: str) -> bool:
        """Apply the runner's own swap commands (mv/rm of its temp files) to ``files``."""
        try:
            words = shlex.split(command)
        except ValueError:
            return False
        if words[:3] == ["mv", "-f", "--"] and len(words) == 5 and words[3] in self.files:
            self.files[words[4]] = self.files.pop(words[3])
            return True
        if words[:3] == ["rm", "-f", "--"] and len(words) == 4:
            self.files.pop(words[3], None)
            return True
        return False

    # -- the fabric.Connection surface the runner uses -------------------------------

    def run(self, command: str, **kwargs: Any) -> FakeResult:
        if not self.is_connected:
            raise OSError("Socket is closed")
        self.commands.append(command)
        self.run_kwargs.append(kwargs)
        for pattern in self.drops:
            if pattern.fullmatch(command):
                self.drops.remove(pattern)
                self.is_connected = False
                raise EOFError("connection dropped")
        exit_code, stdout, stderr = self._answer(command)
        return FakeResult(command, exit_code, stdout, stderr)

    def put(self, local: Any, remote: str) -> None:
        data = local.read() if hasattr(local, "read") else Path(local).read_bytes()
        self.uploads.append((remote, data))
        self.files[remote] = data

    def get(self, remote: str, local: Any) -> None:
        if remote not in self.files:
            raise FileNotFoundError(2, "No such file", remote)
        if isinstance(local, io.IOBase) or hasattr(local, "write"):
            local.write(self.files[remote])
        else:
            Path(local).write_bytes(self.files[remote])

    def open(self) -> None:
        self.opened += 1

    def close(self) -> None:
        self.closed = True

    def fresh(self) -> FakeConnection:
        """A new fake sharing the response table, files and pending drops, with its own
        command log."""
        clone = FakeConnection(self.responses, files=self.files, strict=self.strict, default=self.default)
        clone.files = self.files
        clone.drops = self.drops
        return clone

    # -- assertions helpers ----------------------------------------------------------

    def changing_commands(self, facts: Iterable[Fact[Any]] = ()) -> list[str]:
        """Commands received, minus the given facts' reads (what an op changed)."""
        reads = {fact.command for fact in facts}
        return [command for command in self.commands if command not in reads]


def fake_host(
    connection: FakeConnection | None = None,
    *,
    name: str = "fake",
    mode: Mode = "apply",
    lock_dir: Path | str | None = None,
    secrets: Iterable[str] = (),
    reconnects: list[FakeConnection] | None = None,
) -> Host:
    """A Host over a FakeConnection (a new empty one if none is given). With ``reconnects``
    (a list the new connections are appended to), a dropped connection is reopened at once
    as a fresh fake sharing the first one's responses and files."""
    connection = connection if connection is not None else FakeConnection()

    def reopen() -> FakeConnection:
        fresh = connection.fresh()
        assert reconnects is not None
        reconnects.append(fresh)
        return fresh

    return Host(
        name,
        connection,
        mode=mode,
        lock_dir=lock_dir,
        redactor=Redactor(secrets),
        connect=reopen if reconnects is not None else None,
        backoff=Backoff(attempts=2, first=0.0, longest=0.0),
    )


def fake_context(
    host: Host,
    settings: Settings | None = None,
    *,
    profile: str = "production",
    address: str = "192.0.2.10",
    artifacts: ArtifactStore | None = None,
) -> Context:
    """A step context on ``host`` (see apply.api): the embedded default config unless
    ``settings`` is given, the named profile of it, and a documentation address."""
    if settings is None:
        from settings.loader import load_settings

        settings = load_settings()
    return Context(host, settings, settings.effective_profile(profile), address, artifacts)
