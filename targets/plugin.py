"""The targets pytest plugin: the config, the inventory of hosts by role, waivers, change
counts, and the fixtures that hand teams their hosts.

The controller (never an xdist worker) loads the config and resolves the fleet once. When a
run collects the suite's phases/ it does so at start-up: the hosts holding a role that one of
the run's teams needs (phases/plan.toml) are created or logged in to, so that a bad config,
a missing role, a missing key or an unreachable host stops the run before any test
(pytest.UsageError). The fleet goes to the workers as JSON in ``workerinput``. Any other run
(the suite's own ``pytest tests/``) creates nothing unless a test requests a host fixture;
then the first process to need it resolves the whole inventory under a file lock and leaves
it for the others of the same run.

Run modes, waivers and change counts follow ``engine.contract``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import engine
from apply.api import Context
from apply.artifacts import ArtifactStore
from apply.extensions import hooks
from apply.redact import Redactor
from apply.runner import Host
from engine import config as engine_config
from engine import contract
from settings.base import EffectiveProfile, Role, Waiver
from settings.loader import ConfigError, load_settings
from settings.model import Settings
from targets import Target, TargetError
from targets.inventory import (
    Fleet,
    PlannedHost,
    effective_profile,
    missing_roles,
    plan_hosts,
    resolve_fleet,
)
from targets.spec import ScratchSpec
from transport import local_state as cache
from transport.ssh import ConnectionDropped, checks_host, dropped_in, fabric_connection, reconnect

# testinfra's pytest11 entry point name.
TESTINFRA_PLUGIN = "pytest11.testinfra"


@dataclass
class Member:
    """One host of the fleet as a team uses it: the runner Host that applies steps, and a
    testinfra host for read-only checks. Both reconnect after a dropped connection."""

    target: Target
    remote: Host
    host: Any


@dataclass
class TargetsState:
    config: pytest.Config
    settings: Settings
    source: str
    planned: list[PlannedHost]
    profile: EffectiveProfile
    rebuild: bool
    run_id: str
    is_controller: bool
    fleet: Fleet | None = None
    failure: str | None = None
    summary: list[str] = field(default_factory=list)
    # This process's connections, by host name.
    members: dict[str, Member] = field(default_factory=dict)
    last_change_count: int = 0
    # Per host name: how many of its results were already reported (--check).
    reported_results: dict[str, int] = field(default_factory=dict)
    # Hosts that stopped answering in this process: later requests fail at once.
    gone: dict[str, ConnectionDropped] = field(default_factory=dict)

    @property
    def mode(self) -> contract.Mode:
        return contract.mode(self.config)

    def lock_dir(self) -> Path:
        # Shared by controller and workers: apt/firewall/systemd locks across processes.
        return self.config.rootpath / "reports" / ".locks"

    def member(self, target: Target) -> Member:
        """This process's connections to ``target`` (opened once)."""
        if target.name not in self.members:
            if target.name in self.gone:
                raise self.gone[target.name]
            endpoint, timeout = target.endpoint, self.settings.ssh.connect_timeout
            connect = functools.partial(fabric_connection, endpoint, timeout=timeout)
            try:
                connection = reconnect(target.name, connect)
            except ConnectionDropped as exc:
                self.gone[target.name] = exc
                raise
            remote = Host(
                target.name,
                connection,
                mode=self.mode,
                lock_dir=self.lock_dir(),
                redactor=Redactor(),
                connect=connect,
            )
            host = checks_host(endpoint, timeout=timeout)
            self.members[target.name] = Member(target, remote, host)
        return self.members[target.name]

    def unreachable(self, dropped: ConnectionDropped) -> str:
        """One line for a host that stopped answering: its name, roles, address and the cause."""
        found = [t for t in (self.fleet.members if self.fleet else ()) if t.name == dropped.host]
        if not found:
            return str(dropped)
        target = found[0]
        return (
            f"host {target.name} ({', '.join(target.roles)}) at {target.address}:{target.port} "
            f"stopped answering: {dropped.reason}"
        )

    def change_count(self) -> int:
        return sum(len(member.remote.changes) for member in self.members.values())

    def new_would_change(self) -> list[contract.WouldChange]:
        """Ops that would change (check mode) since the last call, named ``[host] => op``."""
        entries = []
        for name, member in self.members.items():
            results = member.remote.results
            start = self.reported_results.get(name, 0)
            self.reported_results[name] = len(results)
            entries += [
                contract.WouldChange(f"[{name}] => {result.op}", result.diff or None)
                for result in results[start:]
                if result.changed
            ]
        return entries

    def close(self) -> None:
        for member in self.members.values():
            with contextlib.suppress(Exception):
                member.remote.close()
            with contextlib.suppress(Exception):
                member.host.backend.close()


STATE = pytest.StashKey[TargetsState]()


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    # The suite uses testinfra as a library: its `host` fixture is the primary host. Loaded
    # early (`-p targets.plugin`), keep testinfra's own plugin and its local `host` fixture out;
    # loaded from conftest.py (after entry points), ours overrides it anyway.
    if pluginmanager.get_plugin(TESTINFRA_PLUGIN) is None:
        pluginmanager.set_blocked(TESTINFRA_PLUGIN)
    group = parser.getgroup("hvsuite-targets", "hypervisor suite targets")
    group.addoption(
        "--config",
        dest="hvs_config",
        metavar="PATH",
        default=None,
        help="suite config (TOML); default: settings/scratch.toml (local scratch servers)",
    )
    group.addoption(
        "--target",
        dest="hvs_target",
        metavar="TARGET",
        default=None,
        help="scratch | scratch:FLEET (every host a scratch server of that fleet) | "
        "ssh://user@host[:port] or an ssh alias (replaces the primary host)",
    )
    group.addoption(
        "--scratch-rebuild",
        dest="hvs_scratch_rebuild",
        action="store_true",
        help="destroy and recreate the scratch servers instead of reusing them",
    )
    group.addoption(
        "--artifacts-dir",
        dest="hvs_artifacts_dir",
        metavar="DIR",
        default=None,
        help="directory holding pinned artifacts (offline/air-gapped operation); also their cache",
    )


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    # trylast: the engine has loaded the plan and the run mode by now.
    opt = config.option
    if opt.help or opt.version:
        return
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    source = str(opt.hvs_config or "settings/scratch.toml")
    try:
        settings = load_settings(opt.hvs_config)
        planned = plan_hosts(settings, opt.hvs_target)
        profile = effective_profile(settings, planned)
    except (ConfigError, TargetError) as exc:
        raise pytest.UsageError(str(exc)) from None
    if opt.hvs_artifacts_dir and not Path(opt.hvs_artifacts_dir).is_dir():
        raise pytest.UsageError(
            f"--artifacts-dir {opt.hvs_artifacts_dir}: not a directory; create it or fix the path"
        )
    state = TargetsState(
        config=config,
        settings=settings,
        source=source,
        planned=planned,
        profile=profile,
        rebuild=bool(opt.hvs_scratch_rebuild),
        run_id=workerinput["hvs_run_id"] if workerinput and "hvs_run_id" in workerinput else uuid.uuid4().hex,
        is_controller=workerinput is None,
    )
    config.stash[STATE] = state
    _tell_engine(config, state)
    if workerinput and "hvs_fleet" in workerinput:
        state.fleet = Fleet.from_json(workerinput["hvs_fleet"])
    elif state.is_controller and _runs_phases(config):
        try:
            _resolve_for_teams(config, state)
        except TargetError as exc:
            raise pytest.UsageError(str(exc)) from None


def _tell_engine(config: pytest.Config, state: TargetsState) -> None:
    """Name the fleet the engine records team verdicts for; hand it the signal webhook."""
    from engine import set_signal_webhook, set_target_name

    primary = [host for host in state.planned if Role.PRIMARY in host.roles] or state.planned
    if primary:
        kind = "scratch" if isinstance(primary[0].spec, ScratchSpec) else "ssh"
        set_target_name(config, f"{kind}:{primary[0].name}")
    signals = state.settings.signals
    set_signal_webhook(config, signals.webhook_url, signals.timeout)


def _runs_phases(config: pytest.Config) -> bool:
    """Whether this run collects the suite's phases/ (the build itself, not its unit tests)."""
    if config.option.collectonly:
        return False
    phases = config.rootpath / "phases"
    if not phases.is_dir():
        return False
    args = config.args or [str(config.rootpath)]
    for arg in args:
        path = (config.invocation_params.dir / arg.split("::")[0]).resolve()
        if path == phases or phases in path.parents or path in phases.parents:
            return True
    return False


def _resolve_for_teams(config: pytest.Config, state: TargetsState) -> None:
    """At start-up: check that the inventory holds every role the run's teams need, then
    reach the hosts holding them."""
    from engine import teams_to_run

    team_roles = {team.name: team.roles for team in teams_to_run(config)}
    problems = missing_roles(state.planned, team_roles, state.source)
    if problems:
        raise TargetError("the inventory lacks hosts this run needs:\n  " + "\n  ".join(problems))
    # The roles the firewall's declarations name as sources too: their holders' addresses are
    # in every run's ruleset, whichever teams it selects.
    roles = {role for roles in team_roles.values() for role in roles} | state.settings.source_roles()
    if state.mode != "verify":
        _start_preparations(config, state)
    _resolve(config, state, roles)


def _start_preparations(config: pytest.Config, state: TargetsState) -> None:
    """What teams prepare on the controller (phases/plan.toml ``prepare``) starts now, in the
    background, overlapping the host set-up and the earlier teams."""
    import importlib

    from engine import start_background, teams_to_run

    artifacts_dir = config.getoption("hvs_artifacts_dir")
    for team in teams_to_run(config):
        if team.prepare is None:
            continue
        module, _, function = team.prepare.partition(":")
        job = getattr(importlib.import_module(module), function)(
            state.settings, state.profile, Path(artifacts_dir) if artifacts_dir else None
        )
        if job is not None:
            label, run = job
            start_background(config, f"{team.name}: {label}", run, for_team=team.name)


def _handoff_file(state: TargetsState) -> Path:
    return cache.cache_dir() / "runs" / state.run_id / "fleet.json"


def _resolve(config: pytest.Config, state: TargetsState, roles: set[str]) -> Fleet:
    """Resolve (and for scratch create) the fleet once per run, whichever process asks first."""
    if state.fleet is not None:
        return state.fleet
    if state.failure is not None:
        raise TargetError(state.failure)
    handoff = _handoff_file(state)
    handoff.parent.mkdir(parents=True, exist_ok=True)
    try:
        with cache.lock(f"run-{state.run_id}", timeout=1800):
            if handoff.exists():
                state.fleet = Fleet.from_json(handoff.read_text())
            else:
                fleet, state.summary = resolve_fleet(
                    state.settings, state.planned, roles, source=state.source, rebuild=state.rebuild
                )
                tmp = handoff.with_suffix(".tmp")
                tmp.write_text(fleet.to_json())
                os.replace(tmp, handoff)
                state.fleet = fleet
    except TargetError as exc:
        state.failure = str(exc)
        raise
    if state.is_controller:
        _add_environment(config, state, state.fleet)
    return state.fleet


def _add_environment(config: pytest.Config, state: TargetsState, fleet: Fleet) -> None:
    from engine import add_environment

    primary = fleet.with_role(Role.PRIMARY)
    first = primary[0] if primary else (fleet.members[0] if fleet.members else None)
    lines: dict[str, object] = {
        "hosts": ", ".join(f"{t.name} [{'/'.join(t.roles)}] {t.address}" for t in fleet.members) or "none",
        "profile": state.profile.name,
        "waivers": ", ".join(sorted(w.value for w in state.profile.waivers)) or "none",
        "mode": state.mode,
        "suite_version": _suite_version(config.rootpath),
    }
    if first is not None:
        lines |= {"target": first.url, "os": first.os, "kernel": first.kernel}
    for key, value in lines.items():
        add_environment(config, key, value)


def _suite_version(root: Path) -> str:
    import tomllib

    try:
        with open(root / "pyproject.toml", "rb") as handle:
            return str(tomllib.load(handle)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    state = node.config.stash.get(STATE, None)
    if state is None:
        return
    node.workerinput["hvs_run_id"] = state.run_id
    if state.fleet is not None:
        node.workerinput["hvs_fleet"] = state.fleet.to_json()


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = config.stash.get(STATE, None)
    if state is None or not state.is_controller:
        return []
    waivers = ", ".join(sorted(w.value for w in state.profile.waivers)) or "none"
    lines = [f"hvsuite: profile {state.profile} (waivers: {waivers}), mode {state.mode}"]
    return lines + [f"hvsuite: {line}" for line in state.summary]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = config.stash.get(STATE, None)
    if state is None:
        return
    known = ", ".join(w.value for w in Waiver)
    for item in items:
        for mark in item.iter_markers("requires"):
            if not mark.args:
                raise pytest.UsageError(
                    f"{item.nodeid}: @pytest.mark.requires() names no capability; known waivers: {known}"
                )
            for capability in mark.args:
                if capability not in {w.value for w in Waiver}:
                    raise pytest.UsageError(
                        f"{item.nodeid}: @pytest.mark.requires({capability!r}) names an unknown "
                        f"capability; known waivers: {known}"
                    )
                if state.profile.waives(capability):
                    contract.waive(item, capability, state.profile.name)


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session: pytest.Session) -> Any:
    result = yield  # the engine (trylast) has written the run's verdicts and timeline
    state = session.config.stash.get(STATE, None)
    if state is None:
        return result
    if state.is_controller:
        _run_finished(session.config, state)
    state.close()
    if not state.is_controller:
        return result
    handoff = _handoff_file(state)
    if state.fleet is None and handoff.exists():
        # A worker resolved the fleet lazily: the controller still reports the environment.
        _add_environment(session.config, state, Fleet.from_json(handoff.read_text()))
    if handoff.parent.exists():
        for path in handoff.parent.iterdir():
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            handoff.parent.rmdir()
    return result


def _run_finished(config: pytest.Config, state: TargetsState) -> None:
    """Hand the finished run's reports to the teams that show them on the primary (the
    ``run_finished`` extension point). Never in a dry run; a failure is reported, not raised."""
    if state.mode == "check" or state.fleet is None or not engine.teams_to_run(config):
        return
    fleet = [(t.name, t.address, tuple(t.roles)) for t in state.fleet.members]
    try:
        primary = state.fleet.one(Role.PRIMARY)
        connection = fabric_connection(primary.endpoint, timeout=state.settings.ssh.connect_timeout)
        # No test is running: its commands are not Allure steps.
        host = Host(primary.name, connection, mode=state.mode, lock_dir=state.lock_dir(), report=False)
        try:
            hooks().run_finished(
                host=host,
                settings=state.settings,
                reports_dir=engine.reports_dir(config),
                target_name=engine_config.target_name(config),
                fleet=fleet,
            )
        finally:
            host.close()
    except Exception as exc:  # the run's outcome is settled; say why the reports stayed here
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"hvsuite: reports not published to the primary: {type(exc).__name__}: {exc}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    state = item.config.stash.get(STATE, None)
    dropped = dropped_in(call.excinfo.value) if call.excinfo is not None else None
    if state is not None and dropped is not None:
        # A lost host is one line, not paramiko's traceback: what the operator acts on.
        report.longrepr = state.unreachable(dropped)
    if state is not None:
        count = state.change_count()
        would_change = state.new_would_change() if state.mode == "check" else []
        contract.add_changes(report, count - state.last_change_count, would_change)
        state.last_change_count = count
    return report


# --- fixtures ---------------------------------------------------------------------------


def _state(request: pytest.FixtureRequest) -> TargetsState:
    state = request.config.stash.get(STATE, None)
    if state is None:
        raise pytest.UsageError("targets.plugin is not configured (load it with -p targets.plugin)")
    return state


@dataclass
class FleetMembers:
    """The run's hosts by role, with this process's connections to them."""

    state: TargetsState
    fleet: Fleet

    def one(self, role: Role | str) -> Member:
        try:
            return self.state.member(self.fleet.one(str(role)))
        except TargetError as exc:
            pytest.fail(str(exc), pytrace=False)

    def all(self, role: Role | str) -> list[Member]:
        return [self.state.member(target) for target in self.fleet.with_role(str(role))]

    def context(self, member: Member, artifacts: ArtifactStore | None = None) -> Context:
        """The step context for ``member`` (see apply.api)."""
        return Context(
            host=member.remote,
            settings=self.state.settings,
            profile=self.state.profile,
            address=member.target.address,
            artifacts=artifacts,
            peers=self.fleet.peers(),
        )


@pytest.fixture(scope="session")
def settings(request: pytest.FixtureRequest) -> Settings:
    """The validated suite config."""
    return _state(request).settings


@pytest.fixture(scope="session")
def profile(request: pytest.FixtureRequest) -> EffectiveProfile:
    """The run's one effective profile (waivers and capabilities)."""
    return _state(request).profile


@pytest.fixture(scope="session")
def fleet(request: pytest.FixtureRequest) -> FleetMembers:
    """The run's hosts by role: ``fleet.one("probe")``, ``fleet.all("worker")``."""
    state = _state(request)
    try:
        resolved = _resolve(request.config, state, {role for host in state.planned for role in host.roles})
    except TargetError as exc:
        pytest.fail(str(exc), pytrace=False)
    return FleetMembers(state, resolved)


@pytest.fixture(scope="session")
def primary(fleet: FleetMembers) -> Member:
    """The hypervisor host (role "primary")."""
    return fleet.one(Role.PRIMARY)


@pytest.fixture(scope="session")
def target(primary: Member) -> Target:
    """The primary host's address, port, user and key."""
    return primary.target


@pytest.fixture(scope="session")
def remote(primary: Member) -> Host:
    """apply.runner.Host on the primary host over one reused SSH connection per process."""
    return primary.remote


@pytest.fixture(scope="session")
def host(primary: Member) -> Any:
    """A testinfra host on the primary host, for read-only checks."""
    return primary.host


@pytest.fixture(scope="session")
def probe(fleet: FleetMembers) -> Member:
    """The second host for outside-in checks (role "probe")."""
    return fleet.one(Role.PROBE)


@pytest.fixture(scope="session")
def artifacts(request: pytest.FixtureRequest, settings: Settings) -> ArtifactStore:
    """The pinned artifacts: fetched once into the cache (or read from --artifacts-dir),
    checked against their sha256 before anything is copied to a host."""
    return ArtifactStore(settings.artifacts, artifacts_dir=request.config.getoption("hvs_artifacts_dir"))


@pytest.fixture(scope="session")
def ctx(fleet: FleetMembers, primary: Member, artifacts: ArtifactStore) -> Context:
    """The step context on the primary host: what every single-host team's steps take."""
    return fleet.context(primary, artifacts)
