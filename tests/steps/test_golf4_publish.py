"""Publishing the controller's reports to the dashboard, as data: which records go into the
document, and how (and when) it reaches the host."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from apply.testing import FakeConnection, fake_host
from settings.loader import load_settings
from settings.model import DEFAULT_PLAN
from steps.golf4 import publish
from steps.golf4.app import reports

SETTINGS = load_settings()
TARGET = "scratch:hvs-scratch-host1"
FLEET = [publish.FleetHost("hvs-scratch-host1", "10.231.0.6", ("primary",))]


def _signal(team: str, verdict: str, at: str) -> dict:
    return {
        "team": team,
        "verdict": verdict,
        "phase": 0,
        "duration": 1.5,
        "issues": [],
        "next_teams": [],
        "at": at,
    }


def _reports(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    (state / "scratch_hvs-scratch-host1.json").write_text(
        json.dumps(
            {"target": TARGET, "teams": {"Base": {"verdict": "waived", "at": "2026-12-01T10:00:00+00:00"}}}
        )
    )
    (state / "ssh_other.json").write_text(
        json.dumps(
            {
                "target": "ssh:other",
                "teams": {"Base": {"verdict": "failed", "at": "2026-12-01T10:00:00+00:00"}},
            }
        )
    )
    lines = [json.dumps(_signal("Base", "waived", f"2026-12-01T10:00:{i:02d}+00:00")) for i in range(30)]
    (tmp_path / "signals.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_the_document_holds_this_targets_verdicts_the_latest_signals_and_the_plan(tmp_path: Path) -> None:
    document = publish.document(_reports(tmp_path), target_name=TARGET, fleet=FLEET, signals_kept=20)
    assert document["state"] == {"Base": {"verdict": "waived", "at": "2026-12-01T10:00:00+00:00"}}
    assert len(document["signals"]) == 20 and document["signals"][-1]["at"] == "2026-12-01T10:00:29+00:00"
    assert [team["name"] for team in document["plan"]][:2] == ["Base", "Alpha"]
    assert all(team["implemented"] for team in document["plan"] if team["name"] in ("Base", "Golf-4"))
    assert document["timeline"] is None and document["timeline_written_at"] is None
    assert document["fleet"] == [{"name": "hvs-scratch-host1", "address": "10.231.0.6", "roles": ["primary"]}]
    # The service reads exactly this document.
    (tmp_path / reports.FILE_NAME).write_text(json.dumps(document))
    assert reports.load(tmp_path)["target"] == TARGET
    assert publish.FILE_NAME == reports.FILE_NAME and publish.FORMAT == reports.FORMAT


def test_a_team_without_a_module_is_marked_not_implemented(tmp_path: Path) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text(
        '[[team]]\nname = "A"\nphase = 0\nmodule = "test_a.py"\n'
        '[[team]]\nname = "B"\nphase = 1\nrequires = ["A"]\nmodule = "test_b.py"\n'
    )
    (tmp_path / "test_a.py").write_text("")
    assert [(t["name"], t["implemented"]) for t in publish.plan_teams(plan)] == [("A", True), ("B", False)]


def test_a_signal_still_being_appended_waits_for_the_next_publication(tmp_path: Path) -> None:
    path = tmp_path / "signals.jsonl"
    path.write_text(json.dumps(_signal("Base", "waived", "2026-12-01T10:00:00+00:00")) + '\n{"team": "Alp')
    assert [s["team"] for s in publish.latest_signals(path, 10)] == ["Base"]


def test_the_timeline_is_published_with_the_time_it_was_written(tmp_path: Path) -> None:
    timeline = tmp_path / "timeline.json"
    timeline.write_text(json.dumps({"outcome": {"status": "passed", "text": "run passed"}, "teams": []}))
    os.utime(timeline, (1_796_000_000, 1_796_000_000))
    document = publish.document(
        tmp_path, target_name=TARGET, fleet=[], signals_kept=20, now=datetime(2026, 12, 5, tzinfo=UTC)
    )
    assert document["timeline"]["outcome"]["text"] == "run passed"
    assert document["timeline_written_at"] == datetime.fromtimestamp(1_796_000_000, UTC).isoformat()
    assert document["published_at"] == "2026-12-05T00:00:00+00:00"
    assert document["state"] == {} and document["signals"] == []


def test_publishing_uploads_the_document_atomically_and_counts_no_change(tmp_path: Path) -> None:
    conn = FakeConnection()
    host = fake_host(conn, lock_dir=tmp_path)
    document = publish.publish(host, SETTINGS, _reports(tmp_path), target_name=TARGET, fleet=FLEET)
    assert document is not None
    upload = conn.commands[-1]
    assert upload == publish.upload_command(SETTINGS.golf4.data_dir)
    assert 'mv -f "$tmp" /var/lib/hvsuite/reports/reports.json' in upload
    sent = conn.run_kwargs[-1]["in_stream"].getvalue()
    assert json.loads(sent) == document
    assert host.changes == []  # a report upload, not an op


def test_nothing_is_published_in_a_dry_run_or_where_golf4_is_not_installed(tmp_path: Path) -> None:
    dry = FakeConnection()
    assert (
        publish.publish(fake_host(dry, mode="check"), SETTINGS, tmp_path, target_name=TARGET, fleet=[])
        is None
    )
    assert dry.commands == []
    bare = FakeConnection({f"test -d {SETTINGS.golf4.data_dir}": (1, "", "")})
    assert publish.publish(fake_host(bare), SETTINGS, tmp_path, target_name=TARGET, fleet=[]) is None
    assert bare.commands == [f"test -d {SETTINGS.golf4.data_dir}"]


def test_the_real_plan_is_published_with_every_team() -> None:
    assert len(publish.plan_teams(DEFAULT_PLAN)) == 13


def test_a_dry_runs_timeline_is_left_out_but_its_time_kept(tmp_path: Path) -> None:
    (tmp_path / "timeline.json").write_text(
        json.dumps(
            {
                "outcome": {"status": "passed", "text": "run passed: check mode"},
                "teams": [{"team": "Base", "outcome": "checked", "start": 1.0, "end": 2.0, "duration": 1.0}],
            }
        )
    )
    document = publish.document(tmp_path, target_name=TARGET, fleet=[], signals_kept=20)
    assert document["timeline"] is None and document["timeline_dry_run"] is True
    assert document["timeline_written_at"] is not None
    assert reports.timeline_view(document)["run"] == "none"
