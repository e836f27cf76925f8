"""Team Golf-1: the DR runbook, rendered from what is configured and what the hosts report
(hosts, paths, repository, schedule, keys, restore commands), never written by hand. The
restore commands are the restore drill's own (`steps.golf1.restore.Drill`), so the runbook
names the commands a run has just proven."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from apply import ops
from settings.model import Settings
from steps.delta import etcd
from steps.golf1 import restic
from steps.golf1.restore import Drill

TEMPLATES = Path(__file__).parent / "templates"
FILE_NAME = "golf1-dr-runbook.md"


@dataclass(frozen=True)
class Facts:
    """What the hosts reported when the runbook was rendered."""

    primary: str
    primary_address: str
    backup_address: str
    restore_address: str
    next_run: str
    public_keys: dict[str, str]
    latest_snapshot: str = "latest"
    figures: dict[str, str] = field(default_factory=dict)


def render(settings: Settings, facts: Facts) -> str:
    golf1 = settings.golf1
    drill = Drill(settings)
    server = golf1.backup_server
    return ops.render(
        TEMPLATES / "runbook.md.j2",
        {
            "facts": facts,
            "golf1": golf1,
            "server": server,
            "repository": restic.repository_url(settings),
            "files": restic.files(settings),
            "wrapper": restic.WRAPPER,
            "backup_script": restic.BACKUP_SCRIPT,
            "paths": restic.backup_paths(settings),
            "etcd_snapshot": restic.snapshot_path(settings, restic.ETCD_SNAPSHOT),
            "prometheus_snapshot": restic.snapshot_path(settings, restic.PROMETHEUS_SNAPSHOT),
            "retention": " ".join(golf1.retention.arguments()),
            "forget": restic.forget_command(settings),
            "check": restic.check_command(settings),
            "restore": drill.restore(facts.latest_snapshot),
            "etcd_restore": drill.etcd_restore(),
            "etcd_serve": drill.etcd_serve(),
            "etcd_data_dir": etcd.DATA_DIR,
            "alpha_cert_dir": settings.alpha.tls.cert_dir,
            "prometheus_copy": drill.prometheus_copy(),
            "prometheus_serve": drill.prometheus_serve(),
            "drill": drill,
        },
    )
