"""What the end-to-end tests share: a build of a scratch fleet as an operator runs it (a
`pytest -n auto phases/` subprocess, its reports in a directory of the test's), the embedded
config with the fleet's own load balancer pool, virtual IP and VRRP routers, and the servers'
addresses and removal."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from settings.loader import load_settings

ROOT = Path(__file__).resolve().parents[2]
PYTEST = ROOT / ".venv" / "bin" / "pytest"
# A first build on a machine without the Kubernetes recipe's cache entry builds it (about 13
# minutes on 2 cores, overlapping the first teams).
RUN_TIMEOUT = 2700
# The scratch image may be built first (about 2 minutes on a machine without it).
FIRST_CONNECTION_TIMEOUT = 900.0


@dataclass(frozen=True)
class Addresses:
    """A fleet's own addresses on the shared podman network (scratch.keep_free holds them),
    so that it runs beside a developer's fleet (pool .240/29, virtual IP .250, router ids 51
    and 52) without a clash."""

    pool: str
    virtual_ip: str
    load_balancer_router: int
    virtual_ip_router: int


E2E = Addresses("10.231.0.252/30", "10.231.0.249", 53, 54)
NUCLEAR = Addresses("10.231.0.244/30", "10.231.0.248", 55, 56)


def config(reports: Path, addresses: Addresses = E2E) -> Path:
    """The embedded config with ``addresses``."""
    text = (ROOT / "settings" / "scratch.toml").read_text()
    pool = f'pool = ["{addresses.pool}"]\nvrrp_router_id = {addresses.load_balancer_router}'
    virtual_ip = f'virtual_ip = "{addresses.virtual_ip}"\nvrrp_router_id = {addresses.virtual_ip_router}'
    changes = {'pool = ["10.231.0.240/29"]': pool, 'virtual_ip = "10.231.0.250"': virtual_ip}
    for old, new in changes.items():
        assert old in text, f"scratch.toml no longer has {old}: update tests/e2e/fleet.py"
        text = text.replace(old, new)
    path = reports / "e2e.toml"
    path.write_text(text)
    return path


@dataclass(frozen=True)
class Run:
    """A finished run of the phases: its exit status, output and the teams of its timeline."""

    returncode: int
    output: str
    teams: dict[str, dict]


def run_phases(
    fleet: str,
    reports: Path,
    *extra: str,
    during: Callable[[threading.Event], None] | None = None,
    addresses: Addresses = E2E,
) -> Run:
    """A run of the phases on ``fleet``, as an operator starts it. ``during(done)`` runs beside
    it, and stops what it still has to do once ``done`` is set (the run has ended)."""
    command = [
        str(PYTEST), "-p", "no:cacheprovider", "-n", "auto", "phases/", "--target", f"scratch:{fleet}",
        "--config", str(config(reports, addresses)),
        "--reports-dir", str(reports), "--alluredir", str(reports / "allure-results"), *extra,
    ]  # fmt: skip
    done = threading.Event()
    beside = threading.Thread(target=during, args=(done,), daemon=True) if during else None
    with subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as run:
        if beside is not None:
            beside.start()
        output, _ = run.communicate(timeout=RUN_TIMEOUT)
    # A drill never outlives its run: it would fault the next one.
    done.set()
    if beside is not None:
        beside.join(timeout=120)
    (reports / "pytest.log").write_text(output)
    timeline = reports / "timeline.json"
    teams = json.loads(timeline.read_text())["teams"] if timeline.exists() else []
    return Run(run.returncode, output, {team["team"]: team for team in teams})


def build(
    fleet: str,
    reports: Path,
    *extra: str,
    during: Callable[[threading.Event], None] | None = None,
    addresses: Addresses = E2E,
) -> dict[str, dict]:
    """A run of the phases on ``fleet`` that must pass; the teams of its timeline by name."""
    run = run_phases(fleet, reports, *extra, during=during, addresses=addresses)
    assert run.returncode == 0, run.output[-10000:]
    assert " failed" not in run.output.splitlines()[-1], run.output.splitlines()[-1]
    return run.teams


def connected(server_address: str, done: threading.Event, timeout: float = FIRST_CONNECTION_TIMEOUT) -> bool:
    """Wait until the controller holds an SSH connection to ``server_address`` (the teams are
    at work: the scratch image and servers are ready); False if the run ended first."""
    deadline = time.monotonic() + timeout
    while not established(server_address) and time.monotonic() < deadline:
        if done.wait(0.5):
            return False
    return not done.is_set()


def established(server_address: str, *, kill: bool = False) -> list[str]:
    """The controller's established SSH connections to ``server_address`` (`ss`); with
    ``kill``, each is cut (`ss -K`), as a flaky link would."""
    flags = ["-K"] if kill else []
    command = ["ss", *flags, "-t", "-n", "dst", server_address, "dport", "=", ":22"]
    out = subprocess.run(command, capture_output=True, text=True, check=False).stdout
    return [line for line in out.splitlines()[1:] if "ESTAB" in line]


def address(server: str) -> str:
    for _ in range(int(FIRST_CONNECTION_TIMEOUT * 10)):
        found = subprocess.run(
            ["podman", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", server],
            capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{server} got no address")


def destroy(fleet: str) -> None:
    """Every server the embedded inventory names for ``fleet`` ("<fleet>-<host>")."""
    for host in load_settings().hosts:
        subprocess.run(
            [sys.executable, "-m", "targets", "destroy", f"{fleet}-{host.name}"],
            cwd=ROOT,
            timeout=120,
            check=False,
        )
