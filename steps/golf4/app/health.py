"""Host health from Prometheus' HTTP API and the microVMs flintlock keeps state for (standard
library only: the service queries these on each request, read-only)."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

# node_exporter's figures the dashboard shows per instance: field -> PromQL.
NODE_QUERIES = {
    "load1": "node_load1",
    "memory_available_bytes": "node_memory_MemAvailable_bytes",
    "memory_total_bytes": "node_memory_MemTotal_bytes",
    "root_available_bytes": 'node_filesystem_avail_bytes{mountpoint="/"}',
    "root_size_bytes": 'node_filesystem_size_bytes{mountpoint="/"}',
    "uptime_seconds": "time() - node_boot_time_seconds",
}
# flintlock keeps each microVM's state under <state dir>/vm/<namespace>/<name>/<uid>/, with the
# hypervisor's PID file there while it runs.
PID_FILES = ("firecracker.pid", "cloudhypervisor.pid")


class PrometheusError(Exception):
    pass


class Prometheus:
    """Instant queries against one Prometheus server."""

    def __init__(self, base_url: str, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        url = f"{self.base_url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                body = json.loads(response.read().decode())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise PrometheusError(f"{promql}: {getattr(exc, 'reason', exc)}") from exc
        if body.get("status") != "success" or body.get("data", {}).get("resultType") != "vector":
            raise PrometheusError(f"{promql}: {body.get('error') or 'not a vector result'}")
        return [(dict(item["metric"]), float(item["value"][1])) for item in body["data"]["result"]]


def host_health(prometheus: Prometheus) -> dict[str, Any]:
    """Every scrape target's `up` and node_exporter's figures per instance, or why not."""
    status: dict[str, Any] = {"url": prometheus.base_url, "reachable": True, "error": None}
    try:
        up = prometheus.query("up")
        figures = {field: prometheus.query(promql) for field, promql in NODE_QUERIES.items()}
    except PrometheusError as exc:
        return {
            "prometheus": {**status, "reachable": False, "error": str(exc)},
            "targets": [],
            "nodes": [],
        }
    targets = sorted(
        (
            {"job": labels.get("job", ""), "instance": labels.get("instance", ""), "up": value == 1.0}
            for labels, value in up
        ),
        key=lambda target: (target["job"], target["instance"]),
    )
    nodes: dict[str, dict[str, Any]] = {}
    for field, series in figures.items():
        for labels, value in series:
            instance = labels.get("instance", "")
            node = nodes.setdefault(instance, {"instance": instance, **dict.fromkeys(NODE_QUERIES)})
            # One value per instance (a second series of the same mount point is a duplicate).
            if node[field] is None:
                node[field] = value
    return {"prometheus": status, "targets": targets, "nodes": [nodes[key] for key in sorted(nodes)]}


def systemd_unit(unit: str, run: Callable[[list[str]], str] | None = None) -> dict[str, Any]:
    """The unit's load, active and sub state as systemd reports them."""
    run = run or _systemctl
    try:
        output = run(["systemctl", "show", "-p", "LoadState,ActiveState,SubState", "--", unit])
    except (OSError, subprocess.SubprocessError) as exc:
        return {"unit": unit, "load_state": None, "active_state": None, "sub_state": None, "error": str(exc)}
    values = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
    return {
        "unit": unit,
        "load_state": values.get("LoadState"),
        "active_state": values.get("ActiveState"),
        "sub_state": values.get("SubState"),
        "error": None,
    }


def _systemctl(command: list[str]) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=5).stdout


def _running(pid_file: Path) -> tuple[int | None, bool]:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None, False
    return pid, os.path.exists(f"/proc/{pid}")


def microvms(state_dir: str, unit: str, run: Callable[[list[str]], str] | None = None) -> dict[str, Any]:
    """What flintlock reports here: its service's state and the microVMs in its state directory."""
    root = Path(state_dir) / "vm"
    found = []
    error = None
    try:
        for namespace in sorted(p for p in root.iterdir() if p.is_dir()):
            for name in sorted(p for p in namespace.iterdir() if p.is_dir()):
                for uid in sorted(p for p in name.iterdir() if p.is_dir()):
                    pid, running = None, False
                    for pid_file in PID_FILES:
                        if (uid / pid_file).exists():
                            pid, running = _running(uid / pid_file)
                            break
                    found.append(
                        {
                            "namespace": namespace.name,
                            "name": name.name,
                            "uid": uid.name,
                            "pid": pid,
                            "running": running,
                        }
                    )
    except FileNotFoundError:
        pass
    except OSError as exc:
        error = f"{root}: {exc}"
    return {
        "flintlockd": systemd_unit(unit, run),
        "state_dir": state_dir,
        "state_dir_present": Path(state_dir).is_dir(),
        "microvms": found,
        "error": error,
    }
