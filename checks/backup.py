"""Check helpers for backups and restores (Team Golf-1): the sha256 of every file of a tree
on a host, their comparison, Prometheus and etcd queries, the two backup runs the checks
measure, and the restore drill on the restore host.

Read-only but for what they put back: the backup runs write a nonce key to the primary's
etcd and delete it again (their snapshots stay: they are the repository's, and retention
prunes them); the restore drill writes the restored tree and starts throwaway servers on the
restore host, and stops and removes them again before it returns.
"""

from __future__ import annotations

import json
import secrets
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import allure
import requests

from apply.poll import eventually
from apply.runner import CommandResult, Host
from settings.model import Settings
from steps.golf1 import restic, restore, runbook
from steps.golf1.backup import Access

SERVE_TIMEOUT = 90.0
# The window of samples compared between the primary's Prometheus and the restored one.
SAMPLE_WINDOW = "2m"
PROBE_SERIES = 'node_load1{job="node"}'


def digest_command(root: str, paths: list[str]) -> str:
    """Prints ``<sha256>  <path>`` for each regular file and ``-> <target>  <path>`` for each
    symlink under ``paths``, relative to ``root`` (so a source and its restored copy list the
    same names); paths that do not exist are left out."""
    relative = " ".join(shlex.quote(path.lstrip("/")) for path in paths)
    return (
        f'cd {shlex.quote(root)} && for p in {relative}; do [ -e "$p" ] || [ -L "$p" ] || continue; '
        'find "$p" -type f -print0 | xargs -0r sha256sum; '
        "find \"$p\" -type l -printf '-> %l  %p\\n'; done"
    )


def parse_digests(output: str) -> dict[str, str]:
    digests: dict[str, str] = {}
    for line in output.splitlines():
        if not line.strip():
            continue
        value, _, path = line.partition("  ")
        digests[path] = value
    return digests


def digests(host: Host, root: str, paths: list[str]) -> dict[str, str]:
    return parse_digests(host.run(digest_command(root, paths), timeout=600).stdout)


@dataclass(frozen=True)
class Comparison:
    """Restored files against the source, read before and after the backup."""

    compared: dict[str, str]  # path -> digest, equal in source and restore
    changed_during_backup: dict[str, tuple[str, str, str | None]]  # path -> (before, after, restored)
    missing: list[str]  # in the source (unchanged during the backup), not restored
    different: dict[str, tuple[str, str]]  # path -> (source, restored)
    extra: list[str] = field(default_factory=list)  # restored, in neither source listing

    @property
    def problems(self) -> list[str]:
        lines = [f"not restored: {path}" for path in self.missing]
        lines += [f"differs: {path} source {a} restored {b}" for path, (a, b) in self.different.items()]
        lines += [
            f"changed while the backup ran and restored as neither version: {path}"
            for path, (before, after, restored) in self.changed_during_backup.items()
            if restored not in (before, after)
        ]
        return lines

    def listing(self, withheld: tuple[str, ...] = ()) -> str:
        """The compared files with their sha256; ``withheld`` paths (secrets) by name only."""

        def shown(path: str, digest: str) -> str:
            return "(digest withheld: a secret)" if f"/{path}" in withheld else digest

        rows = [f"{shown(path, digest)}  /{path}" for path, digest in sorted(self.compared.items())]
        rows += [
            f"{shown(path, restored or 'absent')}  /{path}  (changed on the source during the backup)"
            for path, (before, after, restored) in sorted(self.changed_during_backup.items())
        ]
        return "\n".join(rows) + "\n"


def compare(
    before: dict[str, str],
    after: dict[str, str],
    restored: dict[str, str],
    *,
    written_by_backup: tuple[str, ...] = (),
) -> Comparison:
    """A file unchanged on the source across the backup must be restored byte for byte; one
    that changed meanwhile (another team at work) must be restored as one of its versions; a
    file that appeared or vanished meanwhile is left out. Files under ``written_by_backup``
    (relative prefixes: the snapshots the backup run stages before restic reads them) are
    held to their version after the backup."""

    def staged(path: str) -> bool:
        return any(
            path == prefix or path.startswith(prefix.rstrip("/") + "/") for prefix in written_by_backup
        )

    before = {path: digest for path, digest in before.items() if not staged(path)}
    before |= {path: digest for path, digest in after.items() if staged(path)}
    stable = {path: digest for path, digest in before.items() if after.get(path) == digest}
    changed = {
        path: (digest, after[path], restored.get(path))
        for path, digest in before.items()
        if path in after and after[path] != digest
    }
    missing = sorted(path for path in stable if path not in restored)
    different = {
        path: (digest, restored[path])
        for path, digest in stable.items()
        if path in restored and restored[path] != digest
    }
    compared = {path: digest for path, digest in stable.items() if restored.get(path) == digest}
    extra = sorted(set(restored) - set(before) - set(after))
    return Comparison(compared, changed, missing, different, extra)


def local_json(host: Host, url: str, *, data: dict[str, str] | None = None) -> Any:
    """GET (or form POST) ``url`` on the host's loopback with curl; the parsed JSON answer."""
    form = " ".join(f"--data-urlencode {shlex.quote(f'{k}={v}')}" for k, v in (data or {}).items())
    return json.loads(host.run(f"curl -fsS {form} {shlex.quote(url)}").stdout)


# -- the backup runs -------------------------------------------------------------------


@dataclass(frozen=True)
class BackupRun:
    nonce_key: str
    nonce: str
    started: float
    taken: list[dict[str, Any]]  # the newest snapshot after each of the two runs
    kept: list[str]  # the repository's snapshot ids after both runs
    before: dict[str, str]
    after: dict[str, str]
    durations: list[float]
    prometheus_window: list[Any]  # the primary's samples before the backup


def probe_query(at: float) -> dict[str, str]:
    """Pure: the query both Prometheus servers answer, the probe series' samples in the
    window before ``at``."""
    return {"query": f"{PROBE_SERIES}[{SAMPLE_WINDOW}]", "time": f"{at:.3f}"}


def parse_snapshots(output: str) -> list[dict[str, Any]]:
    """Pure: ``restic snapshots --json``, oldest first."""
    return sorted(json.loads(output) or [], key=lambda snapshot: snapshot["time"])


def snapshots(remote: Host) -> list[dict[str, Any]]:
    """This host's snapshots of the suite's tag, oldest first."""
    return parse_snapshots(
        remote.run(f"{restic.WRAPPER} snapshots --json --tag {restic.TAG} --host $(hostname)").stdout
    )


def primary_samples(address: str, settings: Settings, at: float) -> list[Any]:
    """The probe series' samples before ``at`` from the primary's Prometheus (Charlie's)."""
    url = f"http://{address}:{settings.port('Charlie', 'prometheus')}/api/v1/query"
    answer = requests.get(url, params=probe_query(at), timeout=10)
    answer.raise_for_status()
    return answer.json()["data"]["result"]


@contextmanager
def backup_runs(remote: Host, address: str, settings: Settings) -> Iterator[BackupRun]:
    """Two runs of the backup service on the primary (``remote``, reached at ``address``),
    after writing a key to etcd; the source's digests before and after. The key is deleted
    again on exit; the snapshots stay."""
    golf1 = settings.golf1
    paths = restic.backup_paths(settings)
    nonce = secrets.token_hex(8)
    nonce_key = f"/hvsuite/golf1/drill-{nonce}"
    if golf1.etcd_snapshot:
        remote.run(restic.etcdctl(f"put {nonce_key} {nonce}"))
    try:
        started = time.time()
        window = primary_samples(address, settings, started - 5) if golf1.prometheus_snapshot else []
        durations, taken, before = [], [], {}
        for run in range(2):
            if run == 1:  # the source as the restored (second) backup starts reading it
                before = digests(remote, "/", paths)
            begin = time.monotonic()
            remote.run(f"systemctl start {golf1.unit}.service", timeout=900)
            durations.append(time.monotonic() - begin)
            newest = snapshots(remote)
            assert newest, f"{golf1.unit}.service left no snapshot in the repository"
            taken.append(newest[-1])
        after = digests(remote, "/", paths)
        kept = [snapshot["id"] for snapshot in snapshots(remote)]
        yield BackupRun(nonce_key, nonce, started, taken, kept, before, after, durations, window)
    finally:
        if golf1.etcd_snapshot:
            remote.run(restic.etcdctl(f"del {nonce_key}"), check=False)


def would_forget(remote: Host, settings: Settings) -> list[str]:
    """The short ids ``restic forget`` with the retention policy would still remove."""
    groups = json.loads(remote.run(restic.forget_command(settings, dry_run=True) + " --json").stdout) or []
    return [snapshot["short_id"] for group in groups for snapshot in group.get("remove") or []]


def as_backup_user(remote: Host, settings: Settings, command: str) -> CommandResult:
    """``command`` over SSH to the backup server with the primary's backup key."""
    ssh_config = restic.files(settings).ssh_config
    return remote.run(f"timeout 30 ssh -n -F {ssh_config} {restic.SSH_ALIAS} {command}", check=False)


def sftp_as_backup_user(remote: Host, settings: Settings, batch: str) -> CommandResult:
    """An SFTP batch (``ls``) on the backup server with the primary's backup key."""
    ssh_config = restic.files(settings).ssh_config
    return remote.run(f"echo {batch} | timeout 30 sftp -F {ssh_config} -b - {restic.SSH_ALIAS}", check=False)


# -- the restore drill -----------------------------------------------------------------


@dataclass
class Drill:
    snapshot: str
    restore_seconds: float
    comparison: Comparison
    etcd_value: str | None = None
    etcd_cluster_keys: list[str] = field(default_factory=list)
    prometheus_window: list[Any] = field(default_factory=list)
    units_left: dict[str, str] = field(default_factory=dict)
    trees_left: bool = True
    etcd_errors: list[str] = field(default_factory=list)
    prometheus_errors: list[str] = field(default_factory=list)


def restore_drill(host: Host, settings: Settings, run: BackupRun) -> Drill:
    """The restore of ``run``'s second snapshot onto the restore host (``host``): the files,
    compared with the source (the list attached to the report), then etcd and Prometheus
    served from the restored snapshots by throwaway transient units, which are stopped and
    removed (with the restored trees) before it returns what they answered."""
    golf1 = settings.golf1
    plan = restore.Drill(settings)
    snapshot = run.taken[-1]["id"]
    for command in plan.stop():
        host.run(command, check=False)
    try:
        begin = time.monotonic()
        host.run(plan.restore(snapshot), timeout=1800)
        seconds = time.monotonic() - begin
        restored = digests(host, plan.target, restic.backup_paths(settings))
        staged = (golf1.staging_dir.lstrip("/"),)
        result = Drill(snapshot, seconds, compare(run.before, run.after, restored, written_by_backup=staged))
        paths = restic.files(settings)
        allure.attach(
            result.comparison.listing(withheld=(paths.password, paths.key)),
            name="sha256 of the restored files",
            attachment_type=allure.attachment_type.TEXT,
        )
        if golf1.etcd_snapshot:
            _serve_etcd(host, plan, run, result)
        if golf1.prometheus_snapshot:
            _serve_prometheus(host, plan, run, result)
    finally:
        for command in plan.stop():
            host.run(command, check=False)
    result.units_left = {
        unit: host.run(f"systemctl show -p LoadState --value {unit}", check=False).stdout.strip()
        for unit in plan.units()
    }
    result.trees_left = host.run(f"test -e {plan.target} || test -e {plan.work}", check=False).ok
    return result


def _serve_etcd(host: Host, plan: restore.Drill, run: BackupRun, result: Drill) -> None:
    host.run(f"mkdir -p {plan.work} && {plan.etcd_restore()}")
    host.run(plan.etcd_serve())
    health = eventually(
        lambda: host.run(plan.etcdctl("endpoint health"), check=False),
        lambda answer: answer.ok,
        timeout=SERVE_TIMEOUT,
    )
    if not health.ok:
        result.etcd_errors.append(f"restored etcd never healthy: {health.stderr or health.stdout}")
        return
    result.etcd_value = host.run(plan.etcdctl(f"get {run.nonce_key} --print-value-only")).stdout.strip()
    keys = host.run(plan.etcdctl("get /registry/namespaces/ --prefix --keys-only"))
    result.etcd_cluster_keys = [line for line in keys.stdout.splitlines() if line]


def _serve_prometheus(host: Host, plan: restore.Drill, run: BackupRun, result: Drill) -> None:
    host.run(f"mkdir -p {plan.work} && {plan.prometheus_copy()}")
    host.run(plan.prometheus_serve())
    ready = eventually(
        lambda: host.run(f"curl -fsS {plan.prometheus_url}/-/ready", check=False),
        lambda answer: answer.ok,
        timeout=SERVE_TIMEOUT,
    )
    if not ready.ok:
        result.prometheus_errors.append(f"restored Prometheus never ready: {ready.stderr or ready.stdout}")
        return
    answer = local_json(host, f"{plan.prometheus_url}/api/v1/query", data=probe_query(run.started - 5))
    result.prometheus_window = answer["data"]["result"]


# -- the DR runbook --------------------------------------------------------------------


def runbook_facts(
    remote: Host,
    settings: Settings,
    access: Access,
    run: BackupRun,
    drill: Drill,
    address: str,
    restore_address: str,
) -> runbook.Facts:
    """What the primary (``remote``, reached at ``address``) reports for the runbook, with the
    figures of the backup runs and the drill."""
    next_run = remote.run(
        f"systemctl show -p NextElapseUSecRealtime --value {settings.golf1.unit}.timer", check=False
    ).stdout.strip()
    return runbook.Facts(
        primary=remote.run("hostname").stdout.strip(),
        primary_address=address,
        backup_address=access.backup_address,
        restore_address=restore_address,
        next_run=next_run or "not scheduled",
        public_keys=access.public_keys,
        figures={
            "backup runs (s)": ", ".join(f"{seconds:.1f}" for seconds in run.durations),
            "restore (s)": f"{drill.restore_seconds:.1f}",
            "files compared byte for byte": str(len(drill.comparison.compared)),
        },
    )
