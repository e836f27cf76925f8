"""Team Golf-4's application without its web framework: the views it computes from the
published reports, the timeline chart's geometry, host health and microVMs, and the
`hvsuite` command against a stand-in API on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from checks.dashboard import expected_outcomes
from steps.golf4.app import chart, cli, health, reports

PLAN = [
    {"name": "Base", "phase": 0, "requires": [], "tasks": [], "implemented": True},
    {"name": "Alpha", "phase": 1, "requires": ["Base"], "tasks": [], "implemented": True},
    {"name": "Bravo", "phase": 2, "requires": ["Alpha"], "tasks": [], "implemented": True},
    {"name": "Golf-4", "phase": 6, "requires": ["Bravo"], "tasks": [], "implemented": True},
    {"name": "Golf-3", "phase": 6, "requires": ["Bravo"], "tasks": [], "implemented": False},
]


def signal(team: str, verdict: str, at: str, duration: float = 10.0, phase: int = 0) -> dict[str, Any]:
    return {
        "team": team,
        "verdict": verdict,
        "phase": phase,
        "duration": duration,
        "issues": [],
        "next_teams": [],
        "at": at,
        "text": f"{team.upper()} {verdict}",
    }


def document(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "format": reports.FORMAT,
        "published_at": "2026-12-05T12:00:00+00:00",
        "target": "scratch:hvs-scratch-host1",
        "plan": PLAN,
        "state": {
            "Base": {"verdict": "waived", "at": "2026-12-05T10:00:00+00:00", "first_failure": None},
            "Alpha": {"verdict": "green", "at": "2026-12-05T10:00:00+00:00", "first_failure": None},
            "Bravo": {"verdict": "failed", "at": "2026-12-05T10:00:00+00:00", "first_failure": "t::x"},
        },
        "signals": [],
        "timeline": None,
        "timeline_written_at": None,
        "fleet": [],
    }
    return {**base, **changes}


# -- outcomes -------------------------------------------------------------------------------------

CASES = {
    "recorded only": ([], {"Base": "waived", "Alpha": "green", "Bravo": "failed"}),
    "a newer signal wins": (
        [signal("Bravo", "green", "2026-12-05T11:00:00+00:00")],
        {"Bravo": "green"},
    ),
    "an older signal loses": ([signal("Alpha", "failed", "2026-12-05T09:00:00+00:00")], {"Alpha": "green"}),
    "the recorded verdict wins a tie": (
        [signal("Alpha", "blocked", "2026-12-05T10:00:00+00:00")],
        {"Alpha": "green"},
    ),
    "a dry run verifies nothing": (
        [signal("Bravo", "checked", "2026-12-05T11:00:00+00:00")],
        {"Bravo": "failed"},
    ),
    "a team's latest of several signals": (
        [
            signal("Golf-4", "failed", "2026-12-05T11:00:00+00:00"),
            signal("Golf-4", "green", "2026-12-05T11:30:00+00:00"),
        ],
        {"Golf-4": "green"},
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_each_team_shows_its_latest_outcome(case: str) -> None:
    signals, wanted = CASES[case]
    published = document(signals=signals)
    board = {team["name"]: team["outcome"] for team in reports.team_board(published)}
    assert {name: board[name] for name in wanted} == wanted
    # The check's own reading of the records agrees (two implementations, one rule).
    assert board == expected_outcomes(published)


def test_teams_without_records_are_pending_or_not_implemented() -> None:
    board = {team["name"]: team for team in reports.team_board(document())}
    assert board["Golf-4"]["outcome"] == "pending" and board["Golf-4"]["at"] is None
    assert board["Golf-3"]["outcome"] == "not implemented"
    assert board["Bravo"]["first_failure"] == "t::x" and board["Bravo"]["source"] == "recorded"
    counts = reports.counts(list(board.values()))
    assert counts["pending"] == 1 and counts["not implemented"] == 1 and sum(counts.values()) == len(PLAN)


def test_the_completion_signal_shown_is_the_latest_real_one() -> None:
    published = document(
        signals=[
            signal("Alpha", "green", "2026-12-05T09:00:00+00:00"),
            signal("Alpha", "checked", "2026-12-05T11:00:00+00:00"),
        ]
    )
    alpha = next(team for team in reports.team_board(published) if team["name"] == "Alpha")
    assert alpha["signal"] == "ALPHA green"


def test_signals_are_listed_newest_first_and_bounded() -> None:
    signals = [signal("Base", "waived", f"2026-12-05T10:00:{i:02d}+00:00") for i in range(10)]
    listed = reports.signal_board(document(signals=signals), 3)
    assert [s["at"][-8:-6] for s in listed] == ["09", "08", "07"]


def test_missing_or_foreign_documents_are_reported(tmp_path: Path) -> None:
    with pytest.raises(reports.ReportsError, match="nothing published yet"):
        reports.load(tmp_path)
    (tmp_path / reports.FILE_NAME).write_text(json.dumps({"format": 99}))
    with pytest.raises(reports.ReportsError, match="not a format 1 reports document"):
        reports.load(tmp_path)


# -- timeline ---------------------------------------------------------------------------------------

TIMELINE = {
    "outcome": {"status": "passed", "text": "run passed"},
    "teams": [
        {"team": "Base", "phase": 0, "outcome": "green", "start": 1000.0, "end": 1010.0, "duration": 10.0},
        {"team": "Alpha", "phase": 1, "outcome": "green", "start": 1010.0, "end": 1050.0, "duration": 40.0},
        {
            "team": "Golf-3",
            "phase": 6,
            "outcome": "not implemented",
            "start": None,
            "end": None,
            "duration": 0.0,
        },
    ],
}


def test_the_last_completed_run_is_shown_when_nothing_settled_since() -> None:
    view = reports.timeline_view(
        document(
            timeline=TIMELINE,
            timeline_written_at="2026-12-05T10:00:00+00:00",
            signals=[signal("Base", "green", "2026-12-05T09:59:00+00:00")],
        )
    )
    assert view["run"] == "completed" and view["last_run_text"] == "run passed"
    assert [span["team"] for span in view["spans"]] == ["Base", "Alpha"]
    assert view["origin"] == 1000.0 and view["makespan"] == 50.0


def test_the_run_going_on_is_shown_from_its_signals() -> None:
    view = reports.timeline_view(
        document(
            timeline=TIMELINE,
            timeline_written_at="2026-12-05T10:00:00+00:00",
            signals=[
                signal("Base", "waived", "2026-12-05T11:00:10+00:00", duration=10.0),
                signal("Alpha", "green", "2026-12-05T11:01:00+00:00", duration=50.0, phase=1),
                signal("Bravo", "checked", "2026-12-05T11:02:00+00:00"),
            ],
        )
    )
    assert view["run"] == "in progress" and view["last_run_text"] is None
    assert [(s["team"], s["duration"]) for s in view["spans"]] == [("Base", 10.0), ("Alpha", 50.0)]
    assert view["makespan"] == 60.0


def test_nothing_to_draw_before_the_first_run() -> None:
    view = reports.timeline_view(document())
    assert view["run"] == "none" and view["spans"] == [] and view["origin"] is None


def test_the_chart_puts_every_team_on_one_axis_with_visible_bars() -> None:
    view = reports.timeline_view(
        document(
            signals=[
                signal("Base", "waived", "2026-12-05T11:00:10+00:00", duration=10.0),
                signal("Alpha", "green", "2026-12-05T11:01:00+00:00", duration=50.0),
                signal("Bravo", "blocked", "2026-12-05T11:01:00+00:00", duration=0.0),
            ]
        )
    )
    drawn = chart.geometry(view)
    bars = {bar["team"]: bar for bar in drawn["bars"]}
    assert bars["Base"]["x"] == chart.LABEL_WIDTH
    assert bars["Alpha"]["x"] + bars["Alpha"]["width"] == pytest.approx(chart.LABEL_WIDTH + chart.PLOT_WIDTH)
    assert bars["Alpha"]["width"] == pytest.approx(5 * bars["Base"]["width"], abs=0.1)
    assert bars["Bravo"]["width"] == chart.MIN_BAR_WIDTH  # blocked: settled without running
    assert bars["Bravo"]["x"] + bars["Bravo"]["width"] <= chart.LABEL_WIDTH + chart.PLOT_WIDTH
    assert len({bar["y"] for bar in drawn["bars"]}) == 3
    assert [tick["label"] for tick in drawn["ticks"]][:3] == ["0 s", "10 s", "20 s"]


# -- host health and microVMs -------------------------------------------------------------------------


class FakePrometheus(health.Prometheus):
    def __init__(self, answers: dict[str, list[tuple[dict[str, str], float]]] | None) -> None:
        super().__init__("http://127.0.0.1:9095", 1.0)
        self.answers = answers

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        if self.answers is None:
            raise health.PrometheusError(f"{promql}: connection refused")
        return self.answers.get(promql, [])


def test_host_health_lists_targets_and_node_figures_per_instance() -> None:
    node = {"instance": "hv-1", "job": "node"}
    answers = {
        "up": [
            ({"job": "node", "instance": "hv-1"}, 1.0),
            ({"job": "etcd", "instance": "127.0.0.1:2381"}, 0.0),
        ],
        "node_load1": [(node, 0.5)],
        "node_memory_MemTotal_bytes": [(node, 8e9)],
    }
    found = health.host_health(FakePrometheus(answers))
    assert found["prometheus"]["reachable"] is True
    assert found["targets"] == [
        {"job": "etcd", "instance": "127.0.0.1:2381", "up": False},
        {"job": "node", "instance": "hv-1", "up": True},
    ]
    (only,) = found["nodes"]
    assert only["load1"] == 0.5 and only["memory_total_bytes"] == 8e9
    assert only["root_size_bytes"] is None  # a figure this exporter does not have stays unknown


def test_an_unreachable_prometheus_is_shown_as_such() -> None:
    found = health.host_health(FakePrometheus(None))
    assert found["prometheus"]["reachable"] is False and "connection refused" in found["prometheus"]["error"]
    assert found["targets"] == [] and found["nodes"] == []


def test_microvms_are_read_from_flintlocks_state_directory(tmp_path: Path) -> None:
    vm = tmp_path / "vm" / "ns1" / "web" / "01HXYZ"
    vm.mkdir(parents=True)
    (vm / "firecracker.pid").write_text("999999999\n")
    (tmp_path / "vm" / "ns1" / "db" / "01HABC").mkdir(parents=True)

    def systemctl(command: list[str]) -> str:
        assert command[-1] == "flintlockd.service"
        return "LoadState=loaded\nActiveState=active\nSubState=running\n"

    found = health.microvms(str(tmp_path), "flintlockd.service", systemctl)
    assert found["flintlockd"]["active_state"] == "active" and found["state_dir_present"]
    assert [(m["name"], m["pid"], m["running"]) for m in found["microvms"]] == [
        ("db", None, False),
        ("web", 999999999, False),
    ]


def test_no_state_directory_means_no_microvm(tmp_path: Path) -> None:
    def failing(command: list[str]) -> str:
        raise OSError("no systemctl here")

    found = health.microvms(str(tmp_path / "absent"), "flintlockd.service", failing)
    assert found["microvms"] == [] and found["state_dir_present"] is False and found["error"] is None
    assert found["flintlockd"]["error"] == "no systemctl here"


# -- the hvsuite command ----------------------------------------------------------------------------


@pytest.fixture
def api() -> Iterator[str]:
    published = document(signals=[signal("Base", "waived", "2026-12-05T11:00:00+00:00")], fleet=[])
    board = reports.team_board(published)
    answers = {
        "/api/status": {
            "target": published["target"],
            "published_at": published["published_at"],
            "last_run_status": None,
            "last_run_text": None,
            "counts": reports.counts(board),
            "teams": board,
        },
        "/api/signals?limit=20": reports.signal_board(published, 20),
        "/api/timeline": reports.timeline_view(published),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(answers.get(self.path, {"detail": "Not Found"})).encode()
            self.send_response(200 if self.path in answers else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_status_prints_every_team_or_the_apis_json(api: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--url", api, "status"]) == 0
    table = capsys.readouterr().out
    assert all(team["name"] in table for team in PLAN) and "not implemented" in table
    assert cli.main(["--url", api, "status", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {team["name"]: team["outcome"] for team in printed["teams"]}["Base"] == "waived"


def test_signals_and_timeline_answer(api: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--url", api, "signals"]) == 0
    assert "BASE waived" in capsys.readouterr().out
    assert cli.main(["--url", api, "timeline"]) == 0
    assert "Base" in capsys.readouterr().out


def test_an_api_error_is_reported_with_a_failing_exit(api: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--url", api, "hosts"]) == 1
    assert "HTTP 404: Not Found" in capsys.readouterr().err


def test_the_port_comes_from_the_services_settings(tmp_path: Path) -> None:
    config = tmp_path / "dashboard.json"
    config.write_text(json.dumps({"port": 8480}))
    assert cli.base_url(str(config)) == "http://127.0.0.1:8480"
    with pytest.raises(cli.CommandError, match="cannot read the dashboard's port"):
        cli.base_url(str(tmp_path / "missing.json"))
