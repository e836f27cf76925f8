"""Files that carry team verdicts between processes and runs.

- `SharedState`: the controller's view of the current run (which teams are green, which are
  blocked and why), written atomically (`os.replace`) for xdist workers that read it before
  a team's first setup. A lock-free read of a small JSON file takes a few milliseconds;
  filelock's polling would stall every team start.
- `VerdictLog`: the last verdict of each team per target (``reports/state/<target>.json``),
  so ``--resume`` can count prerequisites verified green by an earlier run.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any


class Verdict(StrEnum):
    PENDING = "pending"
    GREEN = "green"
    # Every test of the team was waived (the target's profile cannot provide what it
    # checks, e.g. Base on a scratch target): nothing failed and nothing was verified. It
    # unblocks its dependents like green, is recorded, and never counts for --resume.
    WAIVED = "waived"
    # Every test of the team was not applicable (a valid config choice makes what it checks
    # irrelevant): like WAIVED, nothing failed, nothing was verified, it unblocks its
    # dependents, is recorded and never counts for --resume. A team with waivers among
    # them is WAIVED (what the profile cannot provide is the thing to notice).
    NOT_APPLICABLE = "not applicable"
    # A --check run (dry run): every test skipped in check mode or waived, nothing
    # failed. Not verified: it lets dependents run their own dry run, never counts as
    # green for --resume and is never recorded.
    CHECKED = "checked"
    FAILED = "failed"
    BLOCKED = "blocked"
    NOT_IMPLEMENTED = "not implemented"
    # Collected but never run (the run stopped early: -x, --maxfail, interrupt).
    NOT_RUN = "not run"
    # Not selected in this run; counted green from a recorded earlier run (--resume).
    RECORDED_GREEN = "recorded green"
    # Not selected in this run and not counted.
    NOT_SELECTED = "not selected"

    @property
    def counts_green(self) -> bool:
        """Verified: green in this run or, with --resume, in a recorded one."""
        return self in (Verdict.GREEN, Verdict.RECORDED_GREEN)

    @property
    def not_verified(self) -> bool:
        """Finished with nothing failed and nothing verified: waived or not applicable."""
        return self in (Verdict.WAIVED, Verdict.NOT_APPLICABLE)

    @property
    def unblocks(self) -> bool:
        """Whether dependents may run after this team: green, `not_verified`, or checked in
        a dry run. Only `counts_green` teams were verified."""
        return self.counts_green or self.not_verified or self is Verdict.CHECKED

    @property
    def settled(self) -> bool:
        return self is not Verdict.PENDING


@dataclass(frozen=True)
class TeamGate:
    """What a worker needs to know about one team before running a dependent."""

    verdict: Verdict
    # For a team that is not green: the reason its dependents are blocked,
    # "Team X (test id)" naming the root cause.
    blocked_by: str | None = None


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class SharedState:
    """Team gates shared by the controller (writer) and xdist workers (readers)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, gates: dict[str, TeamGate]) -> None:
        write_json_atomic(
            self.path,
            {
                name: {"verdict": gate.verdict.value, "blocked_by": gate.blocked_by}
                for name, gate in gates.items()
            },
        )

    def read(self) -> dict[str, TeamGate]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        return {name: TeamGate(Verdict(entry["verdict"]), entry["blocked_by"]) for name, entry in raw.items()}


@dataclass(frozen=True)
class RecordedVerdict:
    verdict: str
    at: str  # ISO 8601, UTC
    first_failure: str | None = None


def _target_file_name(target: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", target).strip("._") or "default"
    return f"{cleaned}.json"


class VerdictLog:
    """Last recorded verdict per team for one target."""

    def __init__(self, directory: Path, target: str) -> None:
        self.target = target
        self.path = directory / _target_file_name(target)

    def read(self) -> dict[str, RecordedVerdict]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{self.path}: not valid JSON ({exc}); delete it to forget recorded verdicts"
            ) from exc
        return {name: RecordedVerdict(**entry) for name, entry in raw.get("teams", {}).items()}

    def record(self, verdicts: dict[str, RecordedVerdict]) -> None:
        """Merge this run's verdicts over the recorded ones (teams not run keep theirs)."""
        merged = self.read()
        merged.update(verdicts)
        write_json_atomic(
            self.path,
            {"target": self.target, "teams": {name: asdict(entry) for name, entry in merged.items()}},
        )


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
