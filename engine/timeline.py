"""The run's timeline and the plan's "Timeline Comparison", computed from real durations.

- sequential: every team one after the other (the plan's "Sequential Waterfall");
- phase barrier: each phase waits for the slowest team of the phase before it (the plan's
  "Parallel Execution" estimate);
- critical path: the longest path through the dependency graph, the best any schedule can do;
- actual makespan: first team start to last team end in this run.

The same figures from the plan's estimated hours (upper bounds) are shown beside them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from engine import background as background_work
from engine.background import BackgroundSpan
from engine.outcome import RunOutcome
from engine.plan import Plan
from engine.run import TeamRun
from engine.state import Verdict


@dataclass(frozen=True)
class TeamSpan:
    team: str
    phase: int
    outcome: str
    # Green in this run (or recorded green with --resume); "waived", "not applicable" and
    # "checked" are not.
    verified: bool
    start: float | None
    end: float | None
    duration: float
    worker: str | None
    changes: int
    tests: int
    blocked_by: str | None
    issues: list[str]
    # Every waived and every not-applicable check: "<test id>: <reason>".
    waived: list[str]
    not_applicable: list[str]


@dataclass(frozen=True)
class Comparison:
    sequential: float
    phase_barrier: float
    critical_path: float
    critical_path_teams: list[str]
    makespan: float


def spans(run: TeamRun) -> list[TeamSpan]:
    result = []
    for name in run.plan.topological_order():
        status = run.teams[name]
        result.append(
            TeamSpan(
                team=name,
                phase=status.phase,
                outcome=status.verdict.value,
                verified=status.verdict.counts_green,
                start=status.start,
                end=status.end,
                duration=status.duration,
                worker=status.worker,
                changes=status.changes,
                tests=len(status.nodeids),
                blocked_by=status.blocked_by,
                issues=status.issues,
                waived=list(status.waivers),
                not_applicable=status.not_applicable_entries,
            )
        )
    return result


def skipped_checks(run: TeamRun, bullet: str = "  ") -> list[str]:
    """Every waived and every not-applicable check by name, each kind under its own heading
    (the terminal summary; timeline.md with a Markdown `bullet`)."""
    waived = [entry for status in run.teams.values() for entry in status.waivers]
    inapplicable = [entry for status in run.teams.values() for entry in status.not_applicable_entries]
    lines: list[str] = []
    if waived:
        lines += ["", f"waived ({len(waived)}; skipped because the target's profile cannot provide them):"]
        lines += [f"{bullet}WAIVED {entry}" for entry in waived]
    if inapplicable:
        lines += [
            "",
            f"not applicable ({len(inapplicable)}; skipped because a config choice makes them irrelevant):",
        ]
        lines += [f"{bullet}NOT APPLICABLE {entry}" for entry in inapplicable]
    return lines


def compare(plan: Plan, durations: dict[str, float], makespan: float) -> Comparison:
    length, path = plan.critical_path(durations)
    return Comparison(
        sequential=sum(durations.values()),
        phase_barrier=plan.phase_barrier_total(durations),
        critical_path=length,
        critical_path_teams=path,
        makespan=makespan,
    )


def measured(run: TeamRun) -> Comparison:
    ran = [s for s in run.teams.values() if s.start is not None and s.end is not None]
    durations = {s.name: s.duration for s in ran}
    makespan = (max(s.end for s in ran) - min(s.start for s in ran)) if ran else 0.0  # type: ignore[type-var,operator]
    return compare(run.plan, durations, makespan)


def estimated(plan: Plan) -> Comparison:
    """The plan's own figures in hours (upper estimates); its makespan is the critical path."""
    durations = {team.name: team.hours[1] for team in plan.teams}
    length, _ = plan.critical_path(durations)
    return compare(plan, durations, length)


def team_intervals(run: TeamRun) -> dict[str, tuple[float, float]]:
    """Each team that ran: (start, end) on the clock of the reports."""
    return {
        name: (status.start, status.end)
        for name, status in run.teams.items()
        if status.start is not None and status.end is not None
    }


def origin(run: TeamRun | None, background: Sequence[BackgroundSpan] = ()) -> float:
    """Time zero of the tables: the first team's start, else the first background job's."""
    starts = [s.start for s in run.teams.values() if s.start is not None] if run is not None else []
    if starts:
        return min(starts)
    return min((span.start for span in background), default=0.0)


def timeline_document(
    run: TeamRun, outcome: RunOutcome, workers: int, background: Sequence[BackgroundSpan] = ()
) -> dict[str, object]:
    team_spans = spans(run)
    starts = [s.start for s in team_spans if s.start is not None]
    return {
        "outcome": {"status": outcome.status.value, "text": outcome.text},
        "origin": min(starts) if starts else None,
        "workers": workers,
        "teams": [asdict(span) for span in team_spans],
        "background": [asdict(span) for span in background],
        "counts": verdict_counts(run),
        "comparison": asdict(measured(run)),
        "plan_estimate_hours": asdict(estimated(run.plan)),
    }


def comparison_table(run: TeamRun) -> list[str]:
    real = measured(run)
    plan = estimated(run.plan)
    rows = [
        ("Sequential (sum of teams)", real.sequential, plan.sequential),
        ("Phase barriers (sum of phase maxima)", real.phase_barrier, plan.phase_barrier),
        ("Critical path (DAG lower bound)", real.critical_path, plan.critical_path),
        ("Actual makespan (this run)", real.makespan, None),
    ]
    lines = ["| Schedule | This run (s) | Plan estimate (h) |", "|---|---:|---:|"]
    for label, seconds, hours in rows:
        lines.append(f"| {label} | {seconds:.1f} | {'' if hours is None else f'{hours:g}'} |")
    path = " → ".join(real.critical_path_teams) or "none"
    lines.append("")
    lines.append(f"Critical path: {path}")
    if real.sequential > 0 and real.makespan > 0:
        lines.append(f"Speed-up over sequential: {real.sequential / real.makespan:.2f}x")
    return lines


# The plan's "Success Metrics": total time under this bound.
PLAN_TIME_BOUND_HOURS = 26


# Always counted in the summary line, in this order; other verdicts only when present.
COUNTED = (Verdict.GREEN, Verdict.WAIVED, Verdict.FAILED, Verdict.BLOCKED, Verdict.NOT_IMPLEMENTED)
COUNTED_WHEN_PRESENT = (
    Verdict.NOT_APPLICABLE,
    Verdict.CHECKED,
    Verdict.NOT_RUN,
    Verdict.RECORDED_GREEN,
    Verdict.NOT_SELECTED,
)


def verdict_counts(run: TeamRun) -> dict[str, int]:
    """Teams per verdict: every verdict of `COUNTED`, the others when some team has them."""
    counts = Counter(status.verdict for status in run.teams.values())
    shown = [*COUNTED, *(verdict for verdict in COUNTED_WHEN_PRESENT if counts[verdict])]
    return {verdict.value: counts[verdict] for verdict in shown}


def summary_line(run: TeamRun) -> str:
    """The end-of-run count of the plan's teams per verdict: "teams: 3 green, 1 waived (not
    verified), 0 failed, ..."."""
    parts = []
    for verdict, count in verdict_counts(run).items():
        note = " (not verified)" if Verdict(verdict).not_verified and count else ""
        parts.append(f"{count} {verdict}{note}")
    return f"teams: {', '.join(parts)}"


def outcome_text(verdict: Verdict) -> str:
    """A verdict as the team table shows it: a waived or not applicable team says it was not
    verified."""
    return f"{verdict.value} (not verified)" if verdict.not_verified else verdict.value


def success_metrics(run: TeamRun) -> list[str]:
    """The plan's "Success Metrics" that a run can measure (merge conflicts and coordination
    between people have no counterpart here). A guard rollback fails its team, so "no step
    required rollback" holds when no team failed. When the only teams short of green were
    waived or not applicable, the phases are complete as far as the target allows, and the
    checks each waiver left unverified are listed by team."""
    complete = [name for name, status in run.teams.items() if status.verdict.counts_green]
    missing = [name for name, status in run.teams.items() if not status.verdict.counts_green]
    failed = [name for name, status in run.teams.items() if status.verdict is Verdict.FAILED]
    makespan = measured(run).makespan
    unverified_only = all(
        run.teams[name].verdict in (Verdict.WAIVED, Verdict.NOT_APPLICABLE) for name in missing
    )

    def answer(ok: bool) -> str:
        return "yes" if ok else "no"

    complete_answer = (
        "yes" if not missing else "as far as the target's waivers allow" if unverified_only else "no"
    )
    detail = ", ".join(f"{name} ({run.teams[name].verdict.value})" for name in missing)
    lines = [
        "Success metrics (plan):",
        f"  all phases complete with verification passing: {complete_answer}"
        f" ({len(complete)}/{len(run.teams)} teams green{'; ' + detail if detail else ''})",
    ]
    left: dict[str, Counter[str]] = {}
    for name, status in run.teams.items():
        for entry in status.waivers:
            left.setdefault(entry.split(": ", 1)[1], Counter())[name] += 1
    for reason, teams in left.items():
        checks = ", ".join(f"{team} {count}" for team, count in teams.items())
        lines.append(f"    left unverified, {reason}: {sum(teams.values())} check(s) ({checks})")
    return [
        *lines,
        f"  total time < {PLAN_TIME_BOUND_HOURS} h: {answer(makespan < PLAN_TIME_BOUND_HOURS * 3600)}"
        f" ({makespan:.1f} s)",
        f"  no step required rollback (no team failed): {answer(not failed)}"
        f"{' (failed: ' + ', '.join(failed) + ')' if failed else ''}",
    ]


def team_table(run: TeamRun) -> list[str]:
    team_spans = spans(run)
    zero = origin(run)
    lines = [
        "| Team | Phase | Outcome | Start (s) | Duration (s) | Worker | Changes | Tests |",
        "|---|---:|---|---:|---:|---|---:|---:|",
    ]
    for span in team_spans:
        start = "" if span.start is None else f"{span.start - zero:.1f}"
        outcome = outcome_text(Verdict(span.outcome))
        if span.blocked_by:
            outcome = f"{outcome}: {span.blocked_by}"
        lines.append(
            f"| {span.team} | {span.phase} | {outcome} | {start} | {span.duration:.1f} | "
            f"{span.worker or ''} | {span.changes} | {span.tests} |"
        )
    return lines


def background_table(run: TeamRun | None, background: Sequence[BackgroundSpan]) -> list[str]:
    """The "Background work" table, its starts on the team table's time zero."""
    return [
        *background_work.table(background, origin(run, background)),
        "",
        "Start: seconds from the first team's start (negative: before it). Overlap: seconds of the",
        "job during which at least one team other than the one it is for was running (that team",
        "may be waiting for it).",
    ]


def timeline_markdown(run: TeamRun, outcome: RunOutcome, background: Sequence[BackgroundSpan] = ()) -> str:
    work = ["## Background work", "", *background_table(run, background), ""] if background else []
    return "\n".join(
        [
            "# Team timeline",
            "",
            *team_table(run),
            *skipped_checks(run, bullet="- "),
            "",
            *work,
            "## Timeline Comparison",
            "",
            *comparison_table(run),
            "",
            *success_metrics(run),
            "",
            summary_line(run),
            outcome.text,
            "",
        ]
    )
