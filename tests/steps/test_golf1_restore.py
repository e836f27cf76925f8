"""Team Golf-1's restore side as data: the restore host's step, the drill's commands, the
comparison of restored files with the source, the backup runs and the restore drill the checks
measure (``checks.backup``, over fake hosts), and the DR runbook rendered from the config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from apply.facts import AptListsAge, DebPackages, ServiceState
from apply.runner import ApplyError
from apply.testing import FakeConnection, fake_context, fake_host
from checks import backup
from checks.backup import compare, digest_command, parse_digests
from settings.loader import load_settings
from steps.golf1 import restic, restore, runbook
from steps.golf1.backup import Access

ACTIVE = "LoadState=loaded\nActiveState=active\nUnitFileState=enabled\nNeedDaemonReload=no\n"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC49V3U1mwues0GWEea2NTtNxQUtx258XCCME+3o+hbx"
SECRET = "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0"


def test_the_restore_host_gets_the_tools_with_their_packaged_servers_stopped(tmp_path: Path) -> None:
    settings = load_settings()
    conn = FakeConnection()
    conn.set_fact(DebPackages(), "")
    conn.set_fact(AptListsAge(), "now=1000\nnewest=900\n")
    for unit in restore.PACKAGED_UNITS:
        conn.set_fact(ServiceState(unit), ACTIVE)  # the packages start them on install
    host = fake_host(conn, lock_dir=tmp_path)
    restore.prepare(fake_context(host, settings))
    commands = [command for result in host.changes for command in result.commands]
    assert any(
        c.endswith("install --no-install-recommends curl etcd-client etcd-server prometheus restic")
        for c in commands
    )
    for unit in restore.PACKAGED_UNITS:
        assert f"systemctl disable -- {unit}" in commands and f"systemctl stop -- {unit}" in commands


def test_the_password_reaches_the_restore_host_root_only_and_unlogged(tmp_path: Path) -> None:
    settings = load_settings()
    conn = FakeConnection()
    host = fake_host(conn, lock_dir=tmp_path, secrets=[SECRET])
    restore.credentials(fake_context(host, settings), SECRET, "203.0.113.5", [KEY])
    password_file = restic.files(settings).password
    assert conn.files[password_file].decode() == SECRET
    recorded = [(result.op, result.commands, result.diff) for result in host.changes]
    assert SECRET not in repr(recorded)
    assert conn.files[restic.files(settings).known_hosts].decode() == f"203.0.113.5 {KEY}\n"
    chmods = [c for c in conn.commands if "chmod 0600" in c]
    assert chmods, "the password file's mode was never set"


def test_the_drill_serves_snapshots_on_loopback_from_transient_units() -> None:
    settings = load_settings()
    drill = restore.Drill(settings)
    assert (
        drill.restore("abc123") == f"{restic.WRAPPER} restore abc123 --target /var/tmp/hvsuite-golf1-restore"
    )
    etcd_restore = drill.etcd_restore()
    assert etcd_restore.startswith(
        "ETCDCTL_API=3 etcdctl snapshot restore /var/tmp/hvsuite-golf1-restore/var/backups/hvsuite/etcd.db "
    )
    assert "--initial-cluster hvsuite-restore=http://127.0.0.1:12380" in etcd_restore
    serve = drill.etcd_serve()
    assert serve.startswith("systemd-run --unit=hvsuite-golf1-restore-etcd --collect /usr/bin/etcd ")
    assert "--listen-client-urls http://127.0.0.1:12379" in serve
    prometheus = drill.prometheus_serve()
    assert "systemd-run --unit=hvsuite-golf1-restore-prometheus --collect /usr/bin/prometheus" in prometheus
    assert "--web.listen-address=127.0.0.1:19095" in prometheus
    stop = drill.stop()
    assert stop[:2] == [
        "systemctl stop hvsuite-golf1-restore-etcd 2>/dev/null; "
        "systemctl reset-failed hvsuite-golf1-restore-etcd 2>/dev/null",
        "systemctl stop hvsuite-golf1-restore-prometheus 2>/dev/null; "
        "systemctl reset-failed hvsuite-golf1-restore-prometheus 2>/dev/null",
    ]
    assert stop[2] == "rm -rf -- /var/tmp/hvsuite-golf1-restore /var/tmp/hvsuite-golf1-restore-serve"


def test_digests_are_listed_relative_to_the_root() -> None:
    command = digest_command("/var/tmp/r", ["/etc", "/var/backups/hvsuite"])
    assert command.startswith("cd /var/tmp/r && for p in etc var/backups/hvsuite; do")
    output = "ab12  etc/hosts\n-> ../proc/self/mounts  etc/mtab\n\ncd34  etc/a b\n"
    assert parse_digests(output) == {
        "etc/hosts": "ab12",
        "etc/mtab": "-> ../proc/self/mounts",
        "etc/a b": "cd34",
    }


def test_a_restore_must_match_the_source_byte_for_byte() -> None:
    before = {"etc/a": "1", "etc/b": "2", "etc/c": "3", "etc/d": "4", "etc/gone": "5"}
    after = {"etc/a": "1", "etc/b": "2", "etc/c": "3x", "etc/d": "4", "etc/new": "6"}
    good = compare(before, after, {"etc/a": "1", "etc/b": "2", "etc/c": "3x", "etc/d": "4"})
    assert good.problems == [] and set(good.compared) == {"etc/a", "etc/b", "etc/d"}
    assert "etc/c" in good.listing() and "etc/gone" not in good.listing()
    assert "1  /etc/a" not in good.listing(
        withheld=("/etc/a",)
    ) and "withheld: a secret)  /etc/a" in good.listing(withheld=("/etc/a",))
    bad = compare(before, after, {"etc/a": "1", "etc/b": "other", "etc/c": "neither"})
    assert bad.problems == [
        "not restored: etc/d",
        "differs: etc/b source 2 restored other",
        "changed while the backup ran and restored as neither version: etc/c",
    ]


def test_the_runbook_names_the_configuration_and_the_restore_commands() -> None:
    settings = load_settings()
    facts = runbook.Facts(
        primary="hv-1",
        primary_address="203.0.113.10",
        backup_address="203.0.113.20",
        restore_address="203.0.113.30",
        next_run="Sun 2026-12-06 03:28:13 UTC",
        public_keys={"primary": KEY},
        figures={"restore (s)": "1.3"},
    )
    text = runbook.render(settings, facts)
    drill = restore.Drill(settings)
    for expected in (
        "sftp:hvsuite-backup-repository:hvsuite/restic",
        "203.0.113.20 port 22",
        "OnCalendar=*-*-* 03:15:00",
        "next run Sun 2026-12-06 03:28:13 UTC",
        "--keep-daily 7 --keep-weekly 4 --keep-monthly 6",
        drill.restore("latest"),
        drill.etcd_restore(),
        drill.prometheus_serve(),
        f"- primary: `{KEY}`",
        "- restore (s): 1.3",
    ):
        assert expected in text, expected
    without = runbook.render(
        load_settings(None, {"golf1": {"etcd_snapshot": False, "prometheus_snapshot": False}}), facts
    )
    assert drill.etcd_restore() not in without and drill.prometheus_serve() not in without
    assert "snapshot save" not in without and "admin API" not in without


def test_the_staged_snapshots_are_held_to_the_version_the_backup_read() -> None:
    before = {
        "etc/a": "1",
        "var/backups/hvsuite/etcd.db": "old",
        "var/backups/hvsuite/prometheus/01X/index": "i1",
    }
    after = {
        "etc/a": "1",
        "var/backups/hvsuite/etcd.db": "new",
        "var/backups/hvsuite/prometheus/01Y/index": "i2",
    }
    staged = ("var/backups/hvsuite",)
    good = compare(
        before,
        after,
        {
            "etc/a": "1",
            "var/backups/hvsuite/etcd.db": "new",
            "var/backups/hvsuite/prometheus/01Y/index": "i2",
        },
        written_by_backup=staged,
    )
    assert good.problems == [] and set(good.compared) == set(after)
    stale = compare(
        before, after, {"etc/a": "1", "var/backups/hvsuite/etcd.db": "old"}, written_by_backup=staged
    )
    assert stale.problems == [
        "not restored: var/backups/hvsuite/prometheus/01Y/index",
        "differs: var/backups/hvsuite/etcd.db source new restored old",
    ]


# -- the backup runs and the restore drill (checks.backup) -----------------------------------


def test_snapshots_are_read_oldest_first_and_both_prometheus_servers_get_one_window() -> None:
    listed = '[{"id": "b", "time": "2026-12-05T10:00:02Z"}, {"id": "a", "time": "2026-12-05T10:00:01Z"}]'
    assert [snapshot["id"] for snapshot in backup.parse_snapshots(listed)] == ["a", "b"]
    assert backup.parse_snapshots("null") == []
    assert backup.probe_query(1000.0) == {"query": 'node_load1{job="node"}[2m]', "time": "1000.000"}


def _snapshot_listing(*batches: list[str]):
    answers = iter(batches)

    def answer(command: str) -> tuple[int, str, str]:
        ids = next(answers)
        return 0, json.dumps([{"id": i, "time": f"2026-12-05T10:00:0{n}Z"} for n, i in enumerate(ids)]), ""

    return answer


def test_two_backup_runs_measure_the_source_around_the_second_and_delete_their_etcd_key(
    tmp_path: Path,
) -> None:
    settings = load_settings(None, {"golf1": {"prometheus_snapshot": False}})
    conn = FakeConnection()
    conn.respond(re.compile(r".* snapshots --json .*"), _snapshot_listing(["a"], ["a", "b"], ["b"]))
    conn.respond(re.compile(r"cd / && for p in .*"), (0, "ab12  etc/hosts\n", ""))
    host = fake_host(conn, lock_dir=tmp_path)
    with backup.backup_runs(host, "192.0.2.10", settings) as run:
        assert [snapshot["id"] for snapshot in run.taken] == ["a", "b"] and run.kept == ["b"]
        assert run.before == run.after == {"etc/hosts": "ab12"} and len(run.durations) == 2
        assert run.prometheus_window == [] and not any(" del " in c for c in conn.commands)
    assert restic.etcdctl(f"put {run.nonce_key} {run.nonce}") in conn.commands
    starts = [i for i, c in enumerate(conn.commands) if c == "systemctl start hvsuite-backup.service"]
    digests = [i for i, c in enumerate(conn.commands) if c.startswith("cd / && ")]
    assert len(starts) == 2 and starts[0] < digests[0] < starts[1] < digests[1]
    assert conn.commands[-1] == restic.etcdctl(f"del {run.nonce_key}")


def test_a_backup_run_without_a_snapshot_fails_and_still_deletes_its_etcd_key(tmp_path: Path) -> None:
    settings = load_settings(None, {"golf1": {"prometheus_snapshot": False}})
    conn = FakeConnection()
    conn.respond(re.compile(r".* snapshots --json .*"), (0, "[]", ""))
    with (
        pytest.raises(AssertionError, match="left no snapshot in the repository"),
        backup.backup_runs(fake_host(conn, lock_dir=tmp_path), "192.0.2.10", settings),
    ):
        pass
    assert conn.commands[-1].startswith(restic.etcdctl("del /hvsuite/golf1/drill-"))


def _run(**values: object) -> backup.BackupRun:
    fields = {
        "nonce_key": "/hvsuite/golf1/drill-abc",
        "nonce": "abc",
        "started": 1000.0,
        "taken": [{"id": "a"}, {"id": "b"}],
        "kept": ["b"],
        "before": {"etc/hosts": "ab12"},
        "after": {"etc/hosts": "ab12"},
        "durations": [1.0, 1.0],
        "prometheus_window": [],
    }
    return backup.BackupRun(**(fields | values))  # type: ignore[arg-type]


SAMPLES = [{"metric": {"job": "node"}, "values": [[995, "0.5"]]}]


def test_the_drill_serves_the_restored_snapshots_then_removes_every_trace(tmp_path: Path) -> None:
    settings = load_settings()
    plan = restore.Drill(settings)
    conn = FakeConnection()
    conn.respond(re.compile(r"cd /var/tmp/hvsuite-golf1-restore && .*"), (0, "ab12  etc/hosts\n", ""))
    conn.respond(plan.etcdctl("get /hvsuite/golf1/drill-abc --print-value-only"), (0, "abc\n", ""))
    keys = "/registry/namespaces/default\n\n/registry/namespaces/kube-system\n"
    conn.respond(plan.etcdctl("get /registry/namespaces/ --prefix --keys-only"), (0, keys, ""))
    query = re.compile(r"curl -fsS --data-urlencode .*/api/v1/query'?")
    conn.respond(query, (0, json.dumps({"data": {"result": SAMPLES}}), ""))
    conn.respond(re.compile(r"systemctl show -p LoadState --value .*"), (0, "not-found\n", ""))
    conn.respond(re.compile(r"test -e .*"), (1, "", ""))
    drill = backup.restore_drill(fake_host(conn, lock_dir=tmp_path), settings, _run())
    assert (drill.snapshot, drill.comparison.compared) == ("b", {"etc/hosts": "ab12"})
    assert drill.etcd_value == "abc" and "/registry/namespaces/kube-system" in drill.etcd_cluster_keys
    assert drill.prometheus_window == SAMPLES and not drill.etcd_errors and not drill.prometheus_errors
    assert set(drill.units_left.values()) == {"not-found"} and not drill.trees_left
    asked = next(c for c in conn.commands if query.fullmatch(c))
    assert "time=995.000" in asked
    restored = conn.commands.index(plan.restore("b"))
    assert conn.commands[:restored] == plan.stop()  # nothing of an earlier drill is left
    served = conn.commands.index(plan.prometheus_serve())
    assert conn.commands[served:].count(plan.stop()[-1]) == 1  # and nothing of this one


def test_a_failed_restore_still_stops_the_throwaway_servers_and_removes_the_trees(tmp_path: Path) -> None:
    settings = load_settings()
    plan = restore.Drill(settings)
    conn = FakeConnection()
    conn.respond(plan.restore("b"), (1, "", "no space left on device"))
    with pytest.raises(ApplyError, match="no space left on device"):
        backup.restore_drill(fake_host(conn, lock_dir=tmp_path), settings, _run())
    assert conn.commands[conn.commands.index(plan.restore("b")) + 1 :] == plan.stop()


def test_the_runbooks_facts_come_from_the_primary_and_the_drills_figures(tmp_path: Path) -> None:
    settings = load_settings()
    conn = FakeConnection()
    conn.respond("hostname", (0, "hv-1\n", ""))
    conn.respond("systemctl show -p NextElapseUSecRealtime --value hvsuite-backup.timer", (0, "\n", ""))
    access = Access("203.0.113.20", {"primary": KEY})
    drill = backup.Drill("b", 1.25, compare({"etc/a": "1"}, {"etc/a": "1"}, {"etc/a": "1"}))
    facts = backup.runbook_facts(
        fake_host(conn, lock_dir=tmp_path), settings, access, _run(), drill, "192.0.2.10", "192.0.2.30"
    )
    assert (facts.primary, facts.primary_address, facts.backup_address, facts.restore_address) == (
        "hv-1",
        "192.0.2.10",
        "203.0.113.20",
        "192.0.2.30",
    )
    assert facts.next_run == "not scheduled" and facts.public_keys == {"primary": KEY}
    assert facts.figures == {
        "backup runs (s)": "1.0, 1.0",
        "restore (s)": "1.2",
        "files compared byte for byte": "1",
    }
