"""Completion signals in the plan's format ("Signal Format" in docs/AGENT_TEAMS_PLAN.md):

    ✅ ALPHA COMPLETE     (⚠️ ALPHA WAIVED / ⚪ ALPHA NOT APPLICABLE / ❌ ALPHA FAILED /
                          ⛔ ALPHA BLOCKED / 🔎 ALPHA CHECKED)
    Phase: 1
    Duration: 12.3 s
    Issues: None
    Next Teams Can Start: Team Bravo, Team Charlie

Each signal is printed live by the controller, appended to ``signals.jsonl`` and
``signals.md`` in the reports directory, and posted to an optional chat webhook
(JSON ``{"text": ...}``, as Slack, Mattermost and Discord-compatible endpoints accept).
Posting happens on a background thread with a bounded time-out; a failed post is recorded
for the summary and never fails the run.
"""

from __future__ import annotations

import json
import queue
import threading
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from apply.redact import Redactor

HEADLINES = {
    "green": ("✅", "COMPLETE"),
    # Every check was waived: dependents may start, nothing of the team was verified.
    "waived": ("⚠️", "WAIVED"),
    # Every check was not applicable (config choices made them irrelevant): likewise.
    "not applicable": ("⚪", "NOT APPLICABLE"),
    "failed": ("❌", "FAILED"),
    "blocked": ("⛔", "BLOCKED"),
    # A dry run (--check): the team's would-change ops are known, nothing was verified.
    "checked": ("🔎", "CHECKED"),
}


@dataclass(frozen=True)
class Signal:
    team: str
    verdict: str  # "green" | "waived" | "not applicable" | "failed" | "blocked" | "checked"
    phase: int
    duration: float
    issues: list[str] = field(default_factory=list)
    next_teams: list[str] = field(default_factory=list)
    at: str = ""

    @property
    def headline(self) -> str:
        icon, word = HEADLINES[self.verdict]
        return f"{icon} {self.team.upper()} {word}"

    def render(self) -> str:
        issues = "; ".join(self.issues) if self.issues else "None"
        following = ", ".join(f"Team {name}" for name in self.next_teams) if self.next_teams else "None"
        return "\n".join(
            [
                self.headline,
                f"Phase: {self.phase}",
                f"Duration: {self.duration:.1f} s",
                f"Issues: {issues}",
                f"Next Teams Can Start: {following}",
            ]
        )


class SignalLog:
    """Appends signals to reports/signals.jsonl and reports/signals.md."""

    def __init__(self, directory: Path) -> None:
        self.jsonl = directory / "signals.jsonl"
        self.markdown = directory / "signals.md"

    def append(self, signal: Signal) -> None:
        self.jsonl.parent.mkdir(parents=True, exist_ok=True)
        with self.jsonl.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({**asdict(signal), "text": signal.render()}, ensure_ascii=False) + "\n")
        with self.markdown.open("a", encoding="utf-8") as handle:
            handle.write(f"```\n{signal.render()}\n```\n<sub>{signal.at}</sub>\n\n")


def describe_endpoint(url: str) -> str:
    """The webhook's scheme and host only: chat webhook paths carry their token."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}/…"


class WebhookPoster:
    """Posts signals to a chat webhook from a background thread, in order."""

    def __init__(self, url: str, timeout: float = 5.0, redactor: Redactor | None = None) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(
                f"signal webhook {describe_endpoint(url)}: the URL must start with http:// or https://"
            )
        self.url = url
        self.timeout = timeout
        self.redactor = redactor or Redactor()
        self.sent = 0
        self.failures: list[str] = []
        self._queue: queue.Queue[Signal | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="signal-webhook", daemon=True)
        self._thread.start()

    def post(self, signal: Signal) -> None:
        self._queue.put(signal)

    def _run(self) -> None:
        while (signal := self._queue.get()) is not None:
            body = json.dumps({"text": self.redactor.redact(signal.render())}).encode()
            request = urllib.request.Request(
                self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read()
                self.sent += 1
            except (urllib.error.URLError, OSError, ValueError) as exc:
                # HTTPError is a URLError; its str() holds the status, never the URL's path.
                reason = getattr(exc, "reason", None) or exc
                self.failures.append(f"{signal.headline}: {describe_endpoint(self.url)}: {reason}")

    def close(self, deadline: float | None = None) -> None:
        """Wait for queued posts, at most `deadline` seconds (default: time-out per queued post + 1)."""
        waiting = self._queue.qsize() + 1
        self._queue.put(None)
        self._thread.join(deadline if deadline is not None else self.timeout * waiting + 1)
        if self._thread.is_alive():
            self.failures.append(
                f"webhook {describe_endpoint(self.url)}: posts still pending at the end of the run"
            )
