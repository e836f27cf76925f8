"""The targets pytest plugin: config, target resolution, apply modes, waivers and fixtures.

The controller (never an xdist worker) loads the config and resolves the target once. When a
run collects the suite's phases/ it does so at start-up, so that a bad config, a missing key
or an unreachable host stops the run before any test (pytest.UsageError); the resolved target
goes to the workers as JSON in `workerinput`. Any other run (the suite's own `pytest tests/`)
creates nothing unless a test requests a target fixture; then the first process to need it
resolves it under a file lock and leaves it for the others of the same run.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from settings.loader import ConfigError, load_settings
from settings.model import Settings, Waiver
from steps import probes
from steps.artifacts import ArtifactStore
from targets import Target, TargetError, cache
from targets.resolve import effective_profile, resolve, resolve_probe, select_spec
from targets.spec import ScratchSpec, SSHSpec
from targets.ssh import fabric_connection

# testinfra's pytest11 entry point name.
TESTINFRA_PLUGIN = "pytest11.testinfra"


@dataclass
class Probe:
    """The second host for outside-in checks. `target` None means the controller itself (an
    ssh target without `target.probe`); then `remote` is None and `host` runs locally."""

    target: Target | None
    host: Any
    remote: Any | None


@dataclass
class TargetsState:
    settings: Settings
    spec: ScratchSpec | SSHSpec
    profile: str
    mode: str
    rebuild: bool
    run_id: str
    is_controller: bool
    rootpath: Path
    target: Target | None = None
    probe_target: Target | None = None
    probe_resolved: bool = False
    failure: str | None = None
    hosts: list[Any] = field(default_factory=list)
    last_change_count: int = 0
    # Per host (by id): how many of its results were already reported (--check).
    reported_results: dict[int, int] = field(default_factory=dict)
    environment_added: bool = False

    @property
    def waivers(self) -> frozenset[Waiver]:
        return self.settings.profiles[self.profile].waivers

    def lock_dir(self, target: Target) -> Path:
        # Shared by controller and workers: apt/firewall/systemd locks across processes.
        return self.rootpath / "reports" / ".locks" / target.name

    def change_count(self) -> int:
        return sum(len(host.changes) for host in self.hosts)

    def new_would_change(self) -> list[dict[str, str | None]]:
        """Ops that would change (check mode) since the last call: ``"[host] => op"`` as
        ``steps.runner.idempotence_gate`` names them, with the runner's redacted diff."""
        entries: list[dict[str, str | None]] = []
        for host in self.hosts:
            results = getattr(host, "results", None)
            if results is None:
                continue
            start = self.reported_results.get(id(host), 0)
            self.reported_results[id(host)] = len(results)
            for result in results[start:]:
                if result.changed:
                    entries.append({"op": f"[{host.name}] => {result.op}", "diff": result.diff or None})
        return entries


STATE = pytest.StashKey[TargetsState]()


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    # The suite uses testinfra as a library: its `host` fixture is the resolved target. Loaded
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
        help="suite config (TOML); default: settings/scratch.toml (a local scratch server)",
    )
    group.addoption(
        "--target",
        dest="hvs_target",
        metavar="TARGET",
        default=None,
        help="scratch | scratch:NAME | ssh://user@host[:port] | an alias from ~/.ssh/config "
        "(default: the config's [target])",
    )
    group.addoption(
        "--scratch-rebuild",
        dest="hvs_scratch_rebuild",
        action="store_true",
        help="destroy and recreate the scratch server(s) instead of reusing them",
    )
    group.addoption(
        "--check",
        dest="hvs_check",
        action="store_true",
        help="dry run: apply steps only report what they would change (with diffs); checks are "
        "skipped as 'check mode: ...' since nothing was applied",
    )
    group.addoption(
        "--verify-only",
        dest="hvs_verify_only",
        action="store_true",
        help="run the read-only checks only; apply steps do nothing",
    )
    group.addoption(
        "--artifacts-dir",
        dest="hvs_artifacts_dir",
        metavar="DIR",
        default=None,
        help="directory holding pinned artifacts (offline/air-gapped operation); also their cache",
    )


def pytest_configure(config: pytest.Config) -> None:
    opt = config.option
    if getattr(opt, "hvs_check", False) and getattr(opt, "hvs_verify_only", False):
        raise pytest.UsageError("--check and --verify-only exclude each other; choose one")
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    try:
        settings = load_settings(getattr(opt, "hvs_config", None))
        spec = select_spec(settings, getattr(opt, "hvs_target", None))
        profile = effective_profile(settings, spec)
    except (ConfigError, TargetError) as exc:
        raise pytest.UsageError(str(exc)) from None
    artifacts_dir = getattr(opt, "hvs_artifacts_dir", None)
    if artifacts_dir and not Path(artifacts_dir).is_dir():
        raise pytest.UsageError(
            f"--artifacts-dir {artifacts_dir}: not a directory; create it or fix the path"
        )
    mode = "check" if opt.hvs_check else "verify" if opt.hvs_verify_only else "apply"
    state = TargetsState(
        settings=settings,
        spec=spec,
        profile=profile,
        mode=mode,
        rebuild=bool(opt.hvs_scratch_rebuild),
        run_id=workerinput["hvs_run_id"] if workerinput and "hvs_run_id" in workerinput else uuid.uuid4().hex,
        is_controller=workerinput is None,
        rootpath=config.rootpath,
    )
    config.stash[STATE] = state
    _tell_engine(config, state)
    if workerinput and "hvs_target" in workerinput:
        state.target = Target.from_json(workerinput["hvs_target"])
    elif state.is_controller and _runs_phases(config):
        try:
            _resolve_target(config, state)
        except TargetError as exc:
            raise pytest.UsageError(str(exc)) from None


def _tell_engine(config: pytest.Config, state: TargetsState) -> None:
    """Name the target the engine records team verdicts for; hand it the signal webhook."""
    try:
        from engine import set_signal_webhook, set_target_name
    except ImportError:
        return
    spec = state.spec
    set_target_name(config, f"scratch:{spec.name}" if isinstance(spec, ScratchSpec) else f"ssh:{spec.label}")
    signals = state.settings.signals
    set_signal_webhook(config, signals.webhook_url, signals.timeout)
    if state.mode == "check":
        try:
            from engine import set_check_mode
        except ImportError:
            return
        set_check_mode(config)


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


def _handoff_file(state: TargetsState) -> Path:
    return cache.cache_dir() / "runs" / state.run_id / "target.json"


def _resolve_target(config: pytest.Config, state: TargetsState) -> Target:
    """Resolve (and for scratch create) the target once per run, whichever process asks first."""
    if state.target is not None:
        return state.target
    if state.failure is not None:
        raise TargetError(state.failure)
    handoff = _handoff_file(state)
    handoff.parent.mkdir(parents=True, exist_ok=True)
    try:
        with cache.lock(f"run-{state.run_id}", timeout=1800):
            if handoff.exists():
                state.target = Target.from_json(handoff.read_text())
            else:
                target, summary = resolve(
                    state.settings, state.spec, profile=state.profile, rebuild=state.rebuild
                )
                tmp = handoff.with_suffix(".tmp")
                tmp.write_text(target.to_json())
                os.replace(tmp, handoff)
                state.target = target
                config.stash[SUMMARY] = summary
    except TargetError as exc:
        state.failure = str(exc)
        raise
    if state.is_controller:
        _add_environment(config, state, state.target)
    return state.target


SUMMARY = pytest.StashKey[str]()


def _add_environment(config: pytest.Config, state: TargetsState, target: Target) -> None:
    if state.environment_added:
        return
    state.environment_added = True
    try:
        from engine import add_environment
    except ImportError:
        return
    try:
        from importlib.metadata import version

        suite_version = version("hvsuite")
    except Exception:
        suite_version = _pyproject_version(config.rootpath)
    for key, value in (
        ("target", target.url if not target.is_scratch else f"scratch:{target.name} ({target.address})"),
        ("profile", state.profile),
        ("waivers", ", ".join(sorted(w.value for w in state.waivers)) or "none"),
        ("os", target.os),
        ("kernel", target.kernel),
        ("suite_version", suite_version),
        ("mode", state.mode),
    ):
        add_environment(config, key, value)


def _pyproject_version(root: Path) -> str:
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
    if state.target is not None:
        node.workerinput["hvs_target"] = state.target.to_json()


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = config.stash.get(STATE, None)
    if state is None or not state.is_controller:
        return []
    waivers = ", ".join(sorted(w.value for w in state.waivers)) or "none"
    lines = [f"hvsuite: profile {state.profile} (waivers: {waivers}), mode {state.mode}"]
    summary = config.stash.get(SUMMARY, None)
    if summary:
        lines.append(f"hvsuite: {summary}")
    return lines


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = config.stash.get(STATE, None)
    if state is None:
        return
    known = {w.value for w in Waiver}
    for item in items:
        for mark in item.iter_markers("requires"):
            if not mark.args:
                raise pytest.UsageError(
                    f"{item.nodeid}: @pytest.mark.requires() names no capability; known waivers: "
                    f"{', '.join(sorted(known))}"
                )
            for capability in mark.args:
                if capability not in known:
                    raise pytest.UsageError(
                        f"{item.nodeid}: @pytest.mark.requires({capability!r}) names an unknown "
                        f"capability; known waivers: {', '.join(sorted(known))}"
                    )
                if capability in state.waivers:
                    item.add_marker(
                        pytest.mark.skip(reason=f"waived: {capability} (profile {state.profile})")
                    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    state = session.config.stash.get(STATE, None)
    if state is None or not state.is_controller:
        return
    handoff = _handoff_file(state)
    if state.target is None and handoff.exists():
        # A worker resolved the target lazily: the controller still reports the environment.
        _add_environment(session.config, state, Target.from_json(handoff.read_text()))
    if handoff.parent.exists():
        for path in handoff.parent.iterdir():
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            handoff.parent.rmdir()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    report = yield
    state = item.config.stash.get(STATE, None)
    if state is not None:
        count = state.change_count()
        report.user_properties.append(("hvs_changes", count - state.last_change_count))
        state.last_change_count = count
        if state.mode == "check":
            would_change = state.new_would_change()
            if would_change:
                report.user_properties.append((WOULD_CHANGE, would_change))
    return report


# --- check mode (--check): apply fixtures in check mode, checks skipped ------------------

WOULD_CHANGE = "hvs_would_change"
CHECK_SKIP = "check mode: not verified, nothing was applied"
# Apply fixtures are named "applied" or "applied_<what>" (CONTRACTS.md); everything else a
# check requests is verification scaffolding, which a dry run must not set up.
APPLY_FIXTURE = "applied"


def _is_apply_fixture(name: str) -> bool:
    return name == APPLY_FIXTURE or name.startswith(APPLY_FIXTURE + "_")


def _apply_fixtures(item: pytest.Item) -> list[str]:
    """The apply fixtures `item` requests, in setup order."""
    return [name for name in getattr(item, "fixturenames", ()) if _is_apply_fixture(name)]


def _check_setup(item: pytest.Item) -> None:
    """Replaces the item's own setup in check mode: set up its apply fixtures only (in check
    mode they compute and record what they would change), then skip the check's body."""
    request = item._request  # type: ignore[attr-defined]
    not_planned: list[str] = []
    for name in _apply_fixtures(item):
        if name == APPLY_FIXTURE:
            # The team's apply steps: an error here is the team's failure, as in a real run.
            request.getfixturevalue(name)
            continue
        try:
            request.getfixturevalue(name)
        except Exception as exc:
            # An apply fixture that reads back what an earlier step wrote cannot finish on a
            # host that was not built; what it would change until then is recorded all the same.
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            not_planned.append(f"fixture {name!r} stopped: {type(exc).__name__}: {first}")
    reason = CHECK_SKIP + ("; " + "; ".join(not_planned) if not_planned else "")
    raise pytest.skip.Exception(reason, _use_item_location=True)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    state = item.config.stash.get(STATE, None)
    if state is None or state.mode != "check" or not isinstance(item, pytest.Function):
        return
    # pytest's SetupState calls item.setup() (which fills every fixture) after the session
    # and module are set up: only the apply fixtures run, then the check is skipped.
    item.setup = functools.partial(_check_setup, item)  # type: ignore[method-assign]


# --- fixtures ---------------------------------------------------------------------------


def _state(request: pytest.FixtureRequest) -> TargetsState:
    state = request.config.stash.get(STATE, None)
    if state is None:
        raise pytest.UsageError("targets.plugin is not configured (load it with -p targets.plugin)")
    return state


@pytest.fixture(scope="session")
def settings(request: pytest.FixtureRequest) -> Settings:
    """The validated suite config."""
    return _state(request).settings


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest) -> Target:
    """The resolved target (created first if it is a scratch server)."""
    state = _state(request)
    try:
        resolved = _resolve_target(request.config, state)
    except TargetError as exc:
        pytest.fail(str(exc), pytrace=False)
    # steps.probes' SSH probes check host keys against the target's known_hosts by default.
    probes.trust_known_hosts(*resolved.known_hosts)
    return resolved


def _connector(target: Target, settings: Settings) -> Callable[[], Any]:
    return functools.partial(fabric_connection, target, timeout=settings.ssh.connect_timeout)


def _runner_host(state: TargetsState, target: Target) -> Any:
    from steps.redact import Redactor
    from steps.runner import Host

    connect = _connector(target, state.settings)
    lock_dir = state.lock_dir(target)
    lock_dir.mkdir(parents=True, exist_ok=True)
    host = Host(
        target.name, connect(), mode=state.mode, lock_dir=lock_dir, redactor=Redactor(), connect=connect
    )
    state.hosts.append(host)
    return host


def _close(host: Any) -> None:
    with contextlib.suppress(Exception):
        host.connection.close()


@pytest.fixture(scope="session")
def remote(request: pytest.FixtureRequest, target: Target) -> Iterator[Any]:
    """steps.runner.Host over one reused SSH connection (one per xdist worker)."""
    host = _runner_host(_state(request), target)
    yield host
    _close(host)


def _testinfra_host(target: Target) -> Any:
    """A testinfra host over its paramiko backend, checking the host key against the
    target's known_hosts (testinfra's own backend warns and accepts any key)."""
    import testinfra.host

    backend = _verifying_backend()(
        # The backend takes the spec without its scheme (testinfra's get_backend strips it).
        target.testinfra_spec.removeprefix("paramiko://"),
        ssh_identity_file=str(target.key_file),
        known_hosts=target.known_hosts,
    )
    host = testinfra.host.Host(backend)
    backend.set_host(host)
    return host


@functools.cache
def _verifying_backend() -> type:
    import paramiko
    from testinfra.backend.paramiko import ParamikoBackend

    from steps.runner import pin_host_keys

    class VerifyingParamikoBackend(ParamikoBackend):
        """testinfra's paramiko backend, connecting to the resolved target only: no ssh
        config (the address, user and key are already resolved), host keys checked."""

        def __init__(self, hostspec: str, *, known_hosts: tuple[str, ...], **kwargs: Any) -> None:
            self.known_hosts = known_hosts
            super().__init__(hostspec, **kwargs)

        @functools.cached_property
        def client(self) -> paramiko.SSHClient:
            client = paramiko.SSHClient()
            pin_host_keys(client, self.known_hosts)
            client.connect(
                hostname=self.host.name,
                port=int(self.host.port) if self.host.port else 22,
                username=self.host.user,
                key_filename=self.ssh_identity_file,
                timeout=self.timeout,
                look_for_keys=False,
                allow_agent=False,
            )
            return client

    return VerifyingParamikoBackend


@pytest.fixture(scope="session")
def artifacts(request: pytest.FixtureRequest, settings: Settings) -> ArtifactStore:
    """The pinned artifacts: fetched once into the cache (or read from --artifacts-dir),
    checked against their sha256 before anything is copied to the target."""
    return ArtifactStore(settings.artifacts, artifacts_dir=request.config.getoption("hvs_artifacts_dir"))


@pytest.fixture(scope="session")
def host(target: Target) -> Any:
    """A testinfra host on the target, for read-only checks."""
    return _testinfra_host(target)


@pytest.fixture(scope="session")
def probe(request: pytest.FixtureRequest, target: Target) -> Iterator[Probe]:
    """A second host for outside-in checks (see targets.resolve.resolve_probe)."""
    state = _state(request)
    if not state.probe_resolved:
        try:
            with cache.lock(f"probe-{state.run_id}", timeout=900):
                state.probe_target = resolve_probe(
                    state.settings, target, rebuild=state.rebuild and _first_probe(state)
                )
        except TargetError as exc:
            pytest.fail(str(exc), pytrace=False)
        state.probe_resolved = True
    if state.probe_target is None:
        import testinfra

        yield Probe(target=None, host=testinfra.get_host("local://"), remote=None)
        return
    probes.trust_known_hosts(*state.probe_target.known_hosts)
    remote_host = _runner_host(state, state.probe_target)
    yield Probe(target=state.probe_target, host=_testinfra_host(state.probe_target), remote=remote_host)
    _close(remote_host)


def _first_probe(state: TargetsState) -> bool:
    # --scratch-rebuild recreates the probe once per run, not once per worker.
    marker = cache.cache_dir() / "runs" / state.run_id / "probe-rebuilt"
    if marker.exists():
        return False
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"run": state.run_id}))
    return True
