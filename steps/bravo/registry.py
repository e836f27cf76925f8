"""The suite's own OCI registry on the target: Debian/Ubuntu's ``docker-registry``
(distribution v2) on the declared port "oci-registry", used where no public registry is
reachable (scratch, offline). It is a test fixture of Team Bravo's pull check: storage on
the local filesystem, no authentication, reachable only from the firewall's admin sources.

The config is written as JSON, which is YAML, so it is syntactically valid by construction;
distribution itself has no config checker.
"""

from __future__ import annotations

import json

from apply import ops
from apply.api import Context, step
from steps.bravo.settings import BravoSettings

SERVICE = "docker-registry"
CONFIG_PATH = "/etc/docker/registry/config.yml"
PORT_NAME = "oci-registry"


def render_config(bravo: BravoSettings, port: int) -> str:
    config = {
        "version": 0.1,
        "log": {"level": "info", "fields": {"service": "registry"}},
        "storage": {
            "filesystem": {"rootdirectory": bravo.registry_storage},
            "delete": {"enabled": True},
        },
        "http": {"addr": f":{port}", "headers": {"X-Content-Type-Options": ["nosniff"]}},
        "health": {"storagedriver": {"enabled": True, "interval": "10s", "threshold": 3}},
    }
    return "# Managed by hvsuite (Team Bravo).\n" + json.dumps(config, indent=2) + "\n"


@step("OCI registry for the pull check")
def apply(ctx: Context) -> None:
    """docker-registry installed, configured on the declared port and running."""
    host, bravo = ctx.host, ctx.settings.bravo
    ops.packages(host, [bravo.registry_package])
    config = ops.file(host, CONFIG_PATH, render_config(bravo, ctx.settings.port("Bravo", PORT_NAME)))
    ops.service(host, SERVICE, enabled=True, running=True, restart=config.changed)
