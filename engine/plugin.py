"""pytest plugin: options, markers and wiring of the engine's parts.

Hooks, by process:

- every process: ``pytest_addoption`` (group "hypervisor suite engine", with the run modes
  ``--check`` and ``--verify-only``), ``pytest_configure`` (tryfirst: sets the run's mode,
  `engine.contract.set_mode`, before any other plugin's pytest_configure reads it; loads and
  validates the plan; registers the parts below).
- every process that runs tests, under ``--check``: `engine.checkmode.CheckMode` (apply
  fixtures only, check bodies skipped).
- collecting process (each xdist worker, or the only process): `engine.collection.TeamCollector`
  - ``pytest_collection_modifyitems`` (trylast: after -k/-m deselection): --teams, markers,
    Allure labels, the selection check, topological order;
  - ``pytest_collection_finish`` (trylast, workers): appends the hidden team boundary;
  - ``pytest_runtest_protocol`` (tryfirst): short-circuits the boundary;
  - ``pytest_runtest_setup`` (tryfirst): blocks a team's tests when a prerequisite is not green.
- controller (xdist's controlling process, or the only process): `engine.controller.EngineController`
  - ``pytest_xdist_make_scheduler`` (the DAG scheduler), ``pytest_configure_node``;
  - ``pytest_runtest_logreport``: team verdicts, blocking, live signals;
  - ``pytest_sessionfinish``/``pytest_terminal_summary``: timeline (with background work,
    `engine.background`), recorded verdicts, Allure.

``-x``/``--maxfail`` keep pytest's meaning: the whole run stops (teams not started are
reported "not run"). Failure isolation between teams needs no -x: a failing team blocks
only its dependents.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import allure
import pytest

from engine import contract
from engine.checkmode import CheckMode
from engine.collection import TIERS, TeamCollector
from engine.config import ENVIRONMENT_KEY, EngineSettings
from engine.contract import SkipKind
from engine.controller import EngineController
from engine.plan import PlanError, load_plan
from engine.run import skip_reason
from engine.state import SharedState, write_json_atomic

SETTINGS_KEY = pytest.StashKey[EngineSettings]()
CONTROLLER_KEY = pytest.StashKey[EngineController]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hvsuite-engine", "hypervisor suite engine")
    group.addoption(
        "--plan",
        dest="engine_plan",
        metavar="PATH",
        help="the plan (TOML); default: the ini option plan_file",
    )
    group.addoption(
        "--teams",
        dest="engine_teams",
        metavar="NAMES",
        help="comma-separated teams to run, with every prerequisite (see --resume)",
    )
    group.addoption(
        "--resume",
        dest="engine_resume",
        action="store_true",
        help="count prerequisites recorded green on this target by an earlier run instead of running them",
    )
    group.addoption(
        "--tier",
        dest="engine_tier",
        choices=TIERS,
        default="full",
        help="smoke: only the checks marked smoke (read-only, cheap); full (default): every check",
    )
    group.addoption(
        "--reports-dir", dest="engine_reports_dir", metavar="DIR", help="where reports go (ini: reports_dir)"
    )
    group.addoption(
        "--signal-webhook",
        dest="engine_webhook",
        metavar="URL",
        help="POST completion signals to this chat webhook",
    )
    group.addoption(
        "--signal-webhook-timeout",
        dest="engine_webhook_timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="time-out of one webhook post (default 5)",
    )
    for option, dest, text in MODE_OPTIONS:
        group.addoption(option, dest=dest, action="store_true", help=text)
    parser.addini("plan_file", "the plan (teams, phases, prerequisites) as TOML", default="phases/plan.toml")
    parser.addini("reports_dir", "directory for signals, timeline and recorded verdicts", default="reports")
    parser.addini("signal_webhook", "chat webhook URL for completion signals", default="")


# (option, dest, help): the run's mode; both absent means "apply".
MODE_OPTIONS = (
    (
        "--check",
        "engine_check",
        "dry run: apply fixtures only report what they would change (with diffs); every other "
        "fixture of a team module is not set up and every check is skipped (not verified)",
    ),
    ("--verify-only", "engine_verify_only", "run the read-only checks only; apply steps do nothing"),
)


def _mode(config: pytest.Config) -> contract.Mode:
    check = bool(config.getoption("engine_check", False))
    verify = bool(config.getoption("engine_verify_only", False))
    if check and verify:
        raise pytest.UsageError("--check and --verify-only exclude each other; choose one")
    return "check" if check else "verify" if verify else "apply"


@pytest.hookimpl(tryfirst=True)
def pytest_report_teststatus(report: pytest.TestReport) -> tuple[str, str, tuple[str, dict]] | None:
    if not report.skipped:
        return None
    kind = contract.skip_kind(skip_reason(report))
    # A waiver is not an ordinary skip: count and show it as its own outcome ("12 waived").
    if kind is SkipKind.WAIVED:
        return "waived", "w", ("WAIVED", {"yellow": True})
    # Nor is a check that a config choice made irrelevant: "3 not applicable", its own too.
    if kind is SkipKind.NOT_APPLICABLE:
        return "not applicable", "n", ("NOT APPLICABLE", {"blue": True})
    # Nor is a dry run's skip (--check): "12 checked", not "12 skipped".
    if kind is SkipKind.CHECK:
        return "checked", "c", ("CHECKED", {"cyan": True})
    return None


@pytest.fixture
def notice(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """``notice(text)``: report by name, with the team's issues and in Allure, something of
    the platform's users that the check found and leaves alone; it never fails the team."""

    def add(text: str) -> None:
        contract.notice(request.node, text)
        allure.attach(text, name="noticed", attachment_type=allure.attachment_type.TEXT)

    return add


def _resolve(config: pytest.Config, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else config.rootpath / path


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: at least as many workers as the plan has teams in one phase. Teams wait on
    their hosts, not on the controller's CPUs, so on a 2-core controller the three teams of
    phase 5 still run side by side. PYTEST_XDIST_AUTO_NUM_WORKERS still decides when set."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    plan_path = _resolve(config, config.getoption("engine_plan") or config.getini("plan_file"))
    try:
        plan = load_plan(plan_path)
    except PlanError:
        return None  # xdist's own count; the plan's error is reported at configure
    widest = max(Counter(team.phase for team in plan).values(), default=1)
    return max(len(os.sched_getaffinity(0)), widest)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "task(name): the plan task a check belongs to (the Allure story)")
    config.addinivalue_line("markers", "smoke: a read-only, cheap check: runs in every tier (--tier smoke)")
    config.addinivalue_line("markers", "full: a drill, measurement or restart: runs in the full tier only")
    mode = _mode(config)
    contract.set_mode(config, mode)
    if mode == "check":
        config.pluginmanager.register(CheckMode(), "engine-check-mode")
    explicit = config.getoption("engine_plan")
    plan_path = _resolve(config, explicit or config.getini("plan_file"))
    if not plan_path.is_file() and not explicit:
        # The plugin is loaded but this project has no plan: stay out of the way.
        return
    try:
        plan = load_plan(plan_path)
    except PlanError as exc:
        raise pytest.UsageError(str(exc)) from None
    teams_option = config.getoption("engine_teams")
    teams = [name.strip() for name in teams_option.split(",") if name.strip()] if teams_option else None
    for name in teams or ():
        if name not in plan:
            raise pytest.UsageError(f"--teams: unknown team {name!r}; the plan has: {', '.join(plan.names)}")
    reports = config.getoption("engine_reports_dir") or config.getini("reports_dir")
    settings = EngineSettings(
        config=config,
        plan=plan,
        reports_dir=_resolve(config, reports),
        teams=teams,
        resume=bool(config.getoption("engine_resume")),
        tier=config.getoption("engine_tier", "full"),
    )
    config.stash[SETTINGS_KEY] = settings
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        _configure_worker(config, settings, workerinput)
        return
    distributed = config.getoption("dist", "no") != "no"
    controller = EngineController(config, settings, distributed=distributed)
    config.stash[CONTROLLER_KEY] = controller
    config.pluginmanager.register(controller, "engine-controller")
    if not distributed:
        config.pluginmanager.register(
            TeamCollector(
                config,
                settings,
                gates=controller.gates,
                collected=lambda nodeids, problems: controller.start_run(nodeids, problems),
                append_boundary=False,
            ),
            "engine-collector",
        )


def _configure_worker(config: pytest.Config, settings: EngineSettings, workerinput: dict) -> None:
    state_dir = Path(workerinput["engine_state_dir"])
    shared = SharedState(state_dir / "gates.json")
    worker_id = workerinput.get("workerid", "gw")

    def collected(nodeids: Sequence[str], problems: list[str]) -> None:
        # The controller decides whether to refuse the run (it raises the UsageError).
        write_json_atomic(state_dir / f"collection-{worker_id}.json", {"problems": problems})

    config.pluginmanager.register(
        TeamCollector(config, settings, gates=shared.read, collected=collected, append_boundary=True),
        "engine-collector",
    )
    config.pluginmanager.register(_WorkerEnvironment(config), "engine-worker-environment")


class _WorkerEnvironment:
    """Hands environment lines added on a worker to the controller (workeroutput)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl
    def pytest_sessionfinish(self) -> None:
        output = getattr(self.config, "workeroutput", None)
        if output is not None:
            # workeroutput crosses execnet: plain str -> str only.
            output["engine_environment"] = json.loads(json.dumps(self.config.stash.get(ENVIRONMENT_KEY, {})))
