"""What the dashboard shows from the reports the controller published (pure, standard library).

The controller publishes one JSON document (``reports.json`` in the data directory): the plan's
teams (and which have a module), the verdicts it recorded for this host's target (its
``reports/state/<target>.json``), the latest completion signals (``signals.jsonl``), the last
completed run's timeline (``timeline.json``, written when a run ends) and the fleet.

A team's **latest outcome** is the newest of its recorded verdict and its latest completion
signal: verdicts are recorded when a run ends, signals as each team settles, so while a run
is still going its finished teams are newer in the signals. Dry-run signals ("checked")
verify nothing and are left out. A team with neither is "not implemented" when it has no
module, else "pending" (never run here, or running now).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

FILE_NAME = "reports.json"
FORMAT = 1
PENDING = "pending"
NOT_IMPLEMENTED = "not implemented"
# The outcomes a team can show, in the order the board counts them.
OUTCOMES = ("green", "waived", "not applicable", "failed", "blocked", NOT_IMPLEMENTED, PENDING)
DRY_RUN = "checked"


class ReportsError(Exception):
    """The published document is missing or not what the controller writes."""


def load(data_dir: str | Path) -> dict[str, Any]:
    """The published document, checked for the keys the views read."""
    path = Path(data_dir) / FILE_NAME
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportsError(
            f"{path}: nothing published yet (the controller publishes after each run)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ReportsError(f"{path}: unreadable: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ReportsError(f"{path}: not a format {FORMAT} reports document")
    for key, kind in (("plan", list), ("state", dict), ("signals", list), ("fleet", list)):
        if not isinstance(document.get(key), kind):
            raise ReportsError(f"{path}: {key!r} is missing or not a {kind.__name__}")
    return document


def epoch(stamp: str | None) -> float | None:
    """An ISO 8601 time with its offset (as the engine writes them) in seconds since the epoch."""
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class _Candidate:
    at: float
    outcome: str
    source: str
    stamp: str
    first_failure: str | None = None


def _real_signals(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        signal
        for signal in document["signals"]
        if isinstance(signal, dict)
        and signal.get("verdict") != DRY_RUN
        and epoch(signal.get("at")) is not None
    ]


def team_board(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Every team of the plan with its latest outcome and completion signal, in plan order."""
    latest_signal: dict[str, dict[str, Any]] = {}
    for signal in _real_signals(document):
        # The file is in order of writing: a later line is a later signal.
        latest_signal[str(signal.get("team"))] = signal
    board = []
    for team in document["plan"]:
        name = team["name"]
        candidates: list[_Candidate] = []
        recorded = document["state"].get(name)
        if isinstance(recorded, dict) and (at := epoch(recorded.get("at"))) is not None:
            candidates.append(
                _Candidate(at, recorded["verdict"], "recorded", recorded["at"], recorded.get("first_failure"))
            )
        signal = latest_signal.get(name)
        if signal is not None:
            candidates.append(
                _Candidate(epoch(signal["at"]) or 0.0, signal["verdict"], "signal", signal["at"])
            )
        # On a tie the recorded verdict wins: it is written after the run's signals.
        newest = max(candidates, key=lambda c: (c.at, c.source == "recorded"), default=None)
        if newest is None:
            outcome = PENDING if team.get("implemented") else NOT_IMPLEMENTED
        else:
            outcome = newest.outcome
        board.append(
            {
                "name": name,
                "phase": team["phase"],
                "requires": list(team.get("requires", [])),
                "tasks": list(team.get("tasks", [])),
                "implemented": bool(team.get("implemented")),
                "outcome": outcome,
                "at": newest.stamp if newest else None,
                "source": newest.source if newest else None,
                "first_failure": newest.first_failure if newest else None,
                "signal": signal.get("text") if signal else None,
                "issues": list(signal.get("issues", [])) if signal else [],
            }
        )
    return board


def counts(board: list[dict[str, Any]]) -> dict[str, int]:
    """How many teams show each outcome (every known outcome, zeros included)."""
    found = {outcome: 0 for outcome in OUTCOMES}
    for team in board:
        found[team["outcome"]] = found.get(team["outcome"], 0) + 1
    return found


def last_run(document: dict[str, Any]) -> dict[str, str | None]:
    """The last completed run's outcome as the engine decided it (None while none was published)."""
    timeline = document.get("timeline")
    if not isinstance(timeline, dict) or not isinstance(timeline.get("outcome"), dict):
        return {"last_run_status": None, "last_run_text": None}
    outcome = timeline["outcome"]
    return {"last_run_status": str(outcome.get("status", "")), "last_run_text": str(outcome.get("text", ""))}


def signal_board(document: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """The latest completion signals, newest first (dry runs' included, marked "checked")."""
    signals = [s for s in document["signals"] if isinstance(s, dict)]
    return [
        {
            "team": str(s.get("team", "")),
            "verdict": str(s.get("verdict", "")),
            "phase": int(s.get("phase", 0)),
            "duration": float(s.get("duration", 0.0)),
            "issues": [str(issue) for issue in s.get("issues", [])],
            "next_teams": [str(team) for team in s.get("next_teams", [])],
            "at": str(s.get("at", "")),
            "text": str(s.get("text", "")),
        }
        for s in reversed(signals[-limit:] if limit > 0 else [])
    ]


def timeline_view(document: dict[str, Any]) -> dict[str, Any]:
    """The latest run's teams on one time axis: the run now going on, as far as its signals go,
    when some team settled after the last timeline was written; else the last completed run.
    Start and end are seconds since the epoch on the controller's clock."""
    phases = {team["name"]: team["phase"] for team in document["plan"]}
    timeline = document.get("timeline") if isinstance(document.get("timeline"), dict) else None
    written = epoch(document.get("timeline_written_at"))
    newer: dict[str, dict[str, Any]] = {}
    for signal in _real_signals(document):
        if written is None or (epoch(signal["at"]) or 0.0) > written:
            newer[str(signal["team"])] = signal
    spans: list[dict[str, Any]] = []
    if newer:
        run, title = "in progress", "The current run, as far as its teams have settled"
        for name, signal in newer.items():
            end = epoch(signal["at"]) or 0.0
            duration = max(float(signal.get("duration", 0.0)), 0.0)
            spans.append(
                {
                    "team": name,
                    "phase": int(signal.get("phase", phases.get(name, 0))),
                    "outcome": str(signal["verdict"]),
                    "start": end - duration,
                    "end": end,
                    "duration": duration,
                }
            )
    elif timeline is not None:
        run, title = "completed", "The last completed run"
        for team in timeline.get("teams", []):
            if team.get("start") is None or team.get("end") is None:
                continue
            spans.append(
                {
                    "team": str(team["team"]),
                    "phase": int(team.get("phase", 0)),
                    "outcome": str(team.get("outcome", "")),
                    "start": float(team["start"]),
                    "end": float(team["end"]),
                    "duration": float(team.get("duration", team["end"] - team["start"])),
                }
            )
    elif document.get("timeline_dry_run"):
        run, title = "none", "No team has settled since the last run, a dry run, which verified nothing"
    else:
        run, title = "none", "No run has been published yet"
    spans.sort(key=lambda span: (span["start"], span["phase"], span["team"]))
    origin = min((span["start"] for span in spans), default=None)
    end = max((span["end"] for span in spans), default=None)
    return {
        "run": run,
        "title": title,
        "origin": origin,
        "makespan": (end - origin) if origin is not None and end is not None else 0.0,
        "spans": spans,
        **(last_run(document) if run == "completed" else {"last_run_status": None, "last_run_text": None}),
    }
