"""Background work of the controller, beside the teams, in the run's timeline.

`start(config, label, fn)` (``engine.start_background``) runs ``fn`` in a daemon thread of the
controller (xdist's controlling process, or the only process), e.g. building a recipe while
the first teams run. It is called from ``pytest_configure`` or ``pytest_sessionstart``. Its
start and end are taken on the clock the team spans use (``time.time()``, as pytest's
reports), its outcome is "ok" or "failed" with the exception's first line. At the end of the
run the timeline shows each job with its overlap: the seconds of it during which at least one
team was running, and which teams those were. A job still running when the session ends is
"unfinished", with its time so far; the session does not wait for it (work that must not be
left half-done, such as a cache entry, is made atomic by whoever writes it).

Workers never see these jobs: a worker that needs a job's result waits for it where the
result is kept (the recipe cache's file lock), not through the engine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import pytest

from apply.redact import Redactor

RUNNING = "running"
OK = "ok"
FAILED = "failed"
UNFINISHED = "unfinished"
MESSAGE_LIMIT = 300


@dataclass
class _Job:
    label: str
    start: float
    for_team: str | None = None
    end: float | None = None
    outcome: str = RUNNING
    message: str | None = None


@dataclass(frozen=True)
class JobRecord:
    """One job as it stood at a moment: `end` None and outcome "unfinished" while it runs."""

    label: str
    start: float
    end: float | None
    outcome: str
    message: str | None = None
    # The team the job prepares for: its time waiting for the job is no overlap.
    for_team: str | None = None


class BackgroundJobs:
    """The controller's background jobs, each in its own daemon thread."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._jobs: list[_Job] = []
        self._threads: list[threading.Thread] = []

    def start(self, label: str, fn: Callable[[], object], *, for_team: str | None = None) -> None:
        job = _Job(label, self._clock(), for_team)

        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                outcome, message = FAILED, one_line(exc)
            else:
                outcome, message = OK, None
            with self._lock:
                job.end = self._clock()
                job.outcome = outcome
                job.message = message

        thread = threading.Thread(target=run, name=f"engine-background: {label}", daemon=True)
        with self._lock:
            self._jobs.append(job)
            self._threads.append(thread)
        thread.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds in all for every job; whether all of them ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

    def records(self) -> list[JobRecord]:
        """Every job so far, in the order they started."""
        with self._lock:
            return [
                JobRecord(
                    job.label,
                    job.start,
                    job.end,
                    UNFINISHED if job.outcome == RUNNING else job.outcome,
                    job.message,
                    job.for_team,
                )
                for job in self._jobs
            ]


BACKGROUND_KEY = pytest.StashKey[BackgroundJobs]()


def start(
    config: pytest.Config, label: str, fn: Callable[[], object], *, for_team: str | None = None
) -> None:
    """Run ``fn()`` in a daemon thread of the controller and show it in the run's timeline as
    `label`. Call it from ``pytest_configure`` or ``pytest_sessionstart`` of the controller.
    ``for_team``: the team that will wait for it (its overlap is counted with the others)."""
    if getattr(config, "workerinput", None) is not None:
        worker = config.workerinput.get("workerid", "?")  # type: ignore[attr-defined]
        raise RuntimeError(
            f"engine.start_background({label!r}) called on xdist worker {worker}: background work runs "
            "in the controller only (check `hasattr(config, 'workerinput')`); a worker waits for its "
            "result where the result is kept (e.g. the recipe cache's lock)"
        )
    jobs = config.stash.get(BACKGROUND_KEY, None)
    if jobs is None:
        jobs = config.stash[BACKGROUND_KEY] = BackgroundJobs()
    jobs.start(label, fn, for_team=for_team)


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``, secrets masked, at most MESSAGE_LIMIT characters."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    text = Redactor().redact(text)
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


@dataclass(frozen=True)
class BackgroundSpan:
    """A job in the timeline: clock times as the team spans have them (`end` None: still
    running when the session ended, `duration` then the time so far)."""

    label: str
    start: float
    end: float | None
    duration: float
    outcome: str
    message: str | None
    # Seconds of the job during which at least one team was running (not counting the team it
    # is for, which may be waiting for it), and those teams (by start).
    overlap: float
    teams: list[str]


def overlap(start: float, end: float, intervals: Iterable[tuple[float, float]]) -> float:
    """Length of [start, end] covered by the union of `intervals`."""
    clipped = sorted((max(a, start), min(b, end)) for a, b in intervals if min(b, end) > max(a, start))
    total = 0.0
    current: tuple[float, float] | None = None
    for a, b in clipped:
        if current is not None and a <= current[1]:
            current = (current[0], max(current[1], b))
            continue
        if current is not None:
            total += current[1] - current[0]
        current = (a, b)
    if current is not None:
        total += current[1] - current[0]
    return total


def spans(
    records: Sequence[JobRecord], teams: Mapping[str, tuple[float, float]], now: float
) -> list[BackgroundSpan]:
    """`records` against the teams' (start, end); an unfinished job counts up to `now`."""
    result = []
    for record in records:
        end = record.end if record.end is not None else max(now, record.start)
        others = {name: span for name, span in teams.items() if name != record.for_team}
        overlapped = sorted(
            (name for name, (a, b) in others.items() if min(b, end) > max(a, record.start)),
            key=lambda name: (teams[name][0], name),
        )
        result.append(
            BackgroundSpan(
                label=record.label,
                start=record.start,
                end=record.end,
                duration=end - record.start,
                outcome=record.outcome,
                message=record.message,
                overlap=overlap(record.start, end, others.values()),
                teams=overlapped,
            )
        )
    return result


def session_spans(
    config: pytest.Config, teams: Mapping[str, tuple[float, float]], now: float | None = None
) -> list[BackgroundSpan]:
    """The spans of the jobs started with `start` on this config (none: an empty list)."""
    jobs = config.stash.get(BACKGROUND_KEY, None)
    if jobs is None:
        return []
    return spans(jobs.records(), teams, time.time() if now is None else now)


def table(background: Sequence[BackgroundSpan], origin: float) -> list[str]:
    """The "Background work" table; starts are seconds from `origin` (the first team's start,
    so a job started before any team has a negative start)."""
    lines = [
        "| Job | Start (s) | Duration (s) | Outcome | Overlap with other teams (s) | Teams overlapped |",
        "|---|---:|---:|---|---:|---|",
    ]
    for span in background:
        outcome = span.outcome
        if span.message:
            outcome = f"{outcome}: {span.message}"
        if span.outcome == UNFINISHED:
            outcome = f"{outcome} (still running at the end; duration so far)"
        cells = [
            _cell(span.label),
            f"{span.start - origin:.1f}",
            f"{span.duration:.1f}",
            _cell(outcome),
            f"{span.overlap:.1f}",
            ", ".join(span.teams),
        ]
        lines.append(f"| {' | '.join(cells)} |")
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
