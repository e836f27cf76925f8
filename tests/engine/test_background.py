"""Background work in the engine's timeline: overlap with the teams, outcomes, the table, and
a synthetic run whose controller starts jobs that finish, fail and never finish."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest
from synthetic import run, sleeper, timeline, write_suite

from engine import background, start_background
from engine.background import BackgroundJobs, JobRecord

pytest_plugins = ["pytester"]

TEAMS = {"Alpha": (100.0, 110.0), "Bravo": (112.0, 120.0), "Charlie": (130.0, 140.0)}


def test_a_job_overlapping_two_teams_partly_counts_only_team_time() -> None:
    job = JobRecord("kubernetes recipe", 105.0, 115.0, "ok")
    [span] = background.spans([job], TEAMS, now=200.0)
    # 105-110 with Alpha, 110-112 no team, 112-115 with Bravo.
    assert span.overlap == pytest.approx(8.0)
    assert span.teams == ["Alpha", "Bravo"]
    assert (span.start, span.end, span.duration, span.outcome) == (105.0, 115.0, 10.0, "ok")


def test_teams_running_side_by_side_are_counted_once() -> None:
    teams = {**TEAMS, "Charlie": (113.0, 125.0)}
    [span] = background.spans([JobRecord("job", 105.0, 115.0, "ok")], teams, now=200.0)
    assert span.overlap == pytest.approx(8.0)
    assert span.teams == ["Alpha", "Bravo", "Charlie"]
    # A job entirely before the first team (or between teams) overlaps nothing.
    [early] = background.spans([JobRecord("early", 90.0, 100.0, "ok")], teams, now=200.0)
    assert early.overlap == 0.0 and early.teams == []
    assert background.overlap(0.0, 10.0, [(2.0, 4.0), (3.0, 5.0), (8.0, 20.0)]) == pytest.approx(5.0)


def test_an_unfinished_job_counts_up_to_the_end_of_the_session() -> None:
    [span] = background.spans([JobRecord("build", 108.0, None, "unfinished")], TEAMS, now=135.0)
    assert span.end is None and span.duration == pytest.approx(27.0)
    # 108-110 Alpha, 112-120 Bravo, 130-135 Charlie.
    assert span.overlap == pytest.approx(15.0)
    assert span.teams == ["Alpha", "Bravo", "Charlie"]


def test_a_failed_job_is_reported_failed_with_its_one_line_message() -> None:
    jobs = BackgroundJobs()
    release = threading.Event()

    def broken() -> None:
        raise RuntimeError("podman build failed: exit 125 token=s3cr3t-value\nfull log: /tmp/build.log")

    jobs.start("broken", broken)
    jobs.start("fine", lambda: 42)
    jobs.start("waiting", release.wait)
    assert not jobs.join(timeout=0.5)
    records = {record.label: record for record in jobs.records()}
    assert records["broken"].outcome == "failed"
    assert records["broken"].message == "RuntimeError: podman build failed: exit 125 token=********"
    assert records["fine"].outcome == "ok" and records["fine"].message is None
    assert records["fine"].end is not None and records["fine"].end >= records["fine"].start
    assert records["waiting"].outcome == "unfinished" and records["waiting"].end is None
    release.set()
    assert jobs.join(timeout=5)
    assert {record.outcome for record in jobs.records()} == {"ok", "failed"}


def test_the_table_is_rendered_from_the_first_teams_start() -> None:
    records = [
        JobRecord("kubernetes recipe", 95.0, 115.0, "ok"),
        JobRecord("mirror | copy", 101.0, 102.5, "failed", "RecipeError: recipe entry x is corrupt"),
        JobRecord("stuck", 99.0, None, "unfinished"),
    ]
    spans = background.spans(records, TEAMS, now=141.0)
    assert background.table(spans, origin=100.0) == [
        "| Job | Start (s) | Duration (s) | Outcome | Overlap with other teams (s) | Teams overlapped |",
        "|---|---:|---:|---|---:|---|",
        "| kubernetes recipe | -5.0 | 20.0 | ok | 13.0 | Alpha, Bravo |",
        "| mirror \\| copy | 1.0 | 1.5 | failed: RecipeError: recipe entry x is corrupt | 1.5 | Alpha |",
        "| stuck | -1.0 | 42.0 | unfinished (still running at the end; duration so far) | 28.0 | "
        "Alpha, Bravo, Charlie |",
    ]


def test_start_runs_on_the_controller_and_is_refused_on_a_worker() -> None:
    controller = SimpleNamespace(stash=pytest.Stash())
    start_background(controller, "job", lambda: None)  # type: ignore[arg-type]
    assert controller.stash[background.BACKGROUND_KEY].join(timeout=5)
    [span] = background.session_spans(controller, {})  # type: ignore[arg-type]
    assert (span.label, span.outcome, span.overlap) == ("job", "ok", 0.0)
    assert background.session_spans(SimpleNamespace(stash=pytest.Stash()), {}) == []  # type: ignore[arg-type]
    worker = SimpleNamespace(stash=pytest.Stash(), workerinput={"workerid": "gw3"})
    refused = "called on xdist worker gw3: background work runs in the controller only"
    with pytest.raises(RuntimeError, match=refused):
        start_background(worker, "job", lambda: None)  # type: ignore[arg-type]


CONFTEST = """
import os
import time

import engine

HERE = os.path.dirname(os.path.abspath(__file__))


def slow():
    # Runs on until a while after Alpha's first test has ended, so it overlaps team work.
    deadline = time.time() + 60
    while not os.path.exists(os.path.join(HERE, "stamps.jsonl")) and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.8)


def broken():
    raise RuntimeError("podman build failed: exit 125\\nfull log: /tmp/build.log")


def pytest_configure(config):
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        try:
            engine.start_background(config, "from a worker", slow)
        except RuntimeError as exc:
            with open(os.path.join(HERE, "refused-" + workerinput["workerid"]), "w") as handle:
                handle.write(str(exc))
        return
    engine.start_background(config, "slow build", slow)
    engine.start_background(config, "broken build", broken)
    engine.start_background(config, "stuck | job", lambda: time.sleep(300))
"""


@pytest.mark.usefixtures("engine_env")
@pytest.mark.parametrize("mode", [("-n", "2"), ("-p", "no:xdist")], ids=["xdist", "no-xdist"])
def test_a_run_shows_background_work_in_its_timeline_and_reports(
    pytester: pytest.Pytester, mode: tuple[str, str]
) -> None:
    teams = {"Alpha": (1, []), "Bravo": (2, ["Alpha"]), "Charlie": (2, ["Alpha"])}
    write_suite(
        pytester,
        teams,
        {"Alpha": sleeper("Alpha", 0.5), "Bravo": sleeper("Bravo", 1.0), "Charlie": sleeper("Charlie", 1.0)},
    )
    pytester.makeconftest(CONFTEST)
    started = time.monotonic()
    result = run(pytester, *mode, "--alluredir", "allure-results")
    # The session did not wait for the job that never finishes.
    assert time.monotonic() - started < 120
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(
        [
            "*- Background work -*",
            "| Job | Start (s) | Duration (s) | Outcome | Overlap with other teams (s) | Teams overlapped |",
            "|---|---:|---:|---|---:|---|",
            "| slow build | -* | * | ok | * | Alpha*|",
            "| broken build | -* | * | failed: RuntimeError: podman build failed: exit 125 | 0.0 |  |",
            "| stuck \\| job | -* | * | unfinished (still running at the end; duration so far) | * | Alpha*|",
            "*- Timeline Comparison -*",
        ]
    )
    document = json.loads((pytester.path / "reports" / "timeline.json").read_text())
    jobs = {entry["label"]: entry for entry in document["background"]}
    assert [jobs[label]["outcome"] for label in ("slow build", "broken build", "stuck | job")] == [
        "ok",
        "failed",
        "unfinished",
    ]
    assert jobs["broken build"]["message"] == "RuntimeError: podman build failed: exit 125"
    assert jobs["stuck | job"]["end"] is None and jobs["stuck | job"]["duration"] > 0
    team_spans = {name: (entry["start"], entry["end"]) for name, entry in timeline(pytester).items()}
    slow = jobs["slow build"]
    assert slow["start"] < document["origin"] and "Alpha" in slow["teams"]
    assert 0.3 < slow["overlap"] <= slow["duration"]
    recomputed = background.overlap(slow["start"], slow["end"], team_spans.values())
    assert slow["overlap"] == pytest.approx(recomputed)
    markdown = (pytester.path / "reports" / "timeline.md").read_text()
    assert "## Background work" in markdown and "| slow build |" in markdown
    attachments = [path.read_text() for path in (pytester.path / "allure-results").glob("*-attachment.md")]
    assert any("## Background work" in text and "| broken build |" in text for text in attachments)
    refused = sorted(path.name for path in pytester.path.glob("refused-*"))
    assert refused == (["refused-gw0", "refused-gw1"] if mode[0] == "-n" else [])
    for path in pytester.path.glob("refused-*"):
        assert "background work runs in the controller only" in path.read_text()


def test_the_team_a_job_is_for_does_not_count_as_overlap() -> None:
    # Delta waits for the job from 10 s on: only Alpha's 0-10 s ran beside it.
    records = [background.JobRecord("Delta: build", 0.0, 30.0, "ok", None, for_team="Delta")]
    teams = {"Alpha": (0.0, 10.0), "Delta": (10.0, 40.0)}
    [span] = background.spans(records, teams, now=50.0)
    assert (span.overlap, span.teams) == (10.0, ["Alpha"])
