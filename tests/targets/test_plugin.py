"""The targets plugin in a pytester sandbox (`-p targets.plugin`): waivers, options, early
errors, change counts, the hand-off to xdist workers. No target is created here."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import targets.plugin as plugin
from targets import Target, TargetError
from targets.inventory import Fleet

WAIVER_TESTS = """
import pytest

@pytest.mark.requires("kvm")
def test_needs_kvm():
    pass

@pytest.mark.requires("devmapper")
def test_needs_devmapper():
    pass

def test_plain():
    pass
"""


@pytest.fixture(autouse=True)
def no_target_creation(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a target was resolved in a run that requests no target fixture")

    monkeypatch.setattr(plugin, "resolve_fleet", refuse)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makeini("[pytest]\nmarkers =\n    requires(capability): waivable capability\n")
    return pytester.runpytest_inprocess("-p", "targets.plugin", "-p", "no:cacheprovider", "-rs", *args)


def test_waived_capability_is_skipped_with_its_name(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(WAIVER_TESTS)
    pytester.makeini("[pytest]\nmarkers =\n    requires(capability): waivable capability\n")
    recorder = pytester.inline_run("-p", "targets.plugin", "-p", "no:cacheprovider")
    passed, skipped, failed = recorder.listoutcomes()
    assert not failed
    assert [r.nodeid.split("::")[1] for r in passed] == ["test_plain"]
    # pytest stores a skip's reason as "Skipped: <reason>" in the report.
    reasons = {r.nodeid.split("::")[1]: r.longrepr[2] for r in skipped}  # type: ignore[index]
    assert reasons == {
        "test_needs_kvm": "Skipped: waived: kvm (profile scratch)",
        "test_needs_devmapper": "Skipped: waived: devmapper (profile scratch)",
    }


def test_production_profile_runs_every_check(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(WAIVER_TESTS)
    config = pytester.makefile(".toml", suite='[target]\nprofile = "production"\n')
    run(pytester, "--config", str(config)).assert_outcomes(passed=3)


def test_profile_with_one_waiver(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(WAIVER_TESTS)
    config = pytester.makefile(
        ".toml", suite='[target]\nprofile = "lab"\n[profiles.lab]\nwaivers = ["devmapper"]\n'
    )
    result = run(pytester, "--config", str(config))
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(["*waived: devmapper (profile lab)"])


def test_unknown_capability_is_an_error_naming_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile('import pytest\n\n@pytest.mark.requires("gpu")\ndef test_needs_gpu():\n    pass\n')
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*test_unknown_capability_is_an_error_naming_the_test.py::test_needs_gpu*"
            "requires('gpu')*known waivers: kvm, devmapper, upstream-artifacts, netpol-enforcement, "
            "csi-snapshots*"
        ]
    )


def test_bad_config_fails_early(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_never():\n    raise AssertionError\n")
    config = pytester.makefile(".toml", suite='[ssh]\nport = 0\n[scratch]\nsubnet = "nope"\n')
    result = run(pytester, "--config", str(config))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*suite.toml: ssh.port: *Fix:*", "*suite.toml: scratch.subnet: *"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--check", "--verify-only"), "*--check and --verify-only exclude each other*"),
        (("--target", "ftp://x"), "*scheme 'ftp' is not supported*"),
        (("--artifacts-dir", "/nonexistent/dir"), "*--artifacts-dir /nonexistent/dir: not a directory*"),
    ],
)
def test_bad_options_fail_early(pytester: pytest.Pytester, args: tuple[str, ...], message: str) -> None:
    pytester.makepyfile("def test_never():\n    raise AssertionError\n")
    result = run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_options_are_in_their_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_inprocess("-p", "targets.plugin", "--help")
    result.stdout.fnmatch_lines(
        [
            "hypervisor suite targets:",
            "*--config=PATH*",
            "*--target=TARGET*",
            "*--scratch-rebuild*",
            "*--check*",
            "*--verify-only*",
            "*--artifacts-dir=DIR*",
        ]
    )


def test_mode_and_settings_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import targets.plugin as plugin

        def test_mode(request, settings):
            assert request.config.stash[plugin.STATE].mode == "verify"
            assert settings.scratch.name == "hvs-scratch"
        """
    )
    run(pytester, "--verify-only").assert_outcomes(passed=1)


def test_changes_are_reported_per_phase(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import json
        import pytest
        import targets.plugin as plugin

        class FakeHost:
            def __init__(self):
                self.changes = []
                self.results = []

        @pytest.fixture(scope="module")
        def fake(request):
            host = FakeHost()
            request.config.stash[plugin.STATE].members["fake"] = plugin.Member(None, host, None)
            host.changes.append("setup op")
            yield host
            host.changes.extend(["teardown op 1", "teardown op 2"])

        def pytest_runtest_logreport(report):
            from engine import contract

            with open("changes.jsonl", "a") as out:
                out.write(json.dumps([report.nodeid, report.when, contract.changes(report)[0]]) + "\\n")
        """
    )
    pytester.makepyfile(
        """
        def test_first(fake):
            fake.changes.extend(["a", "b", "c"])

        def test_second(fake):
            pass
        """
    )
    run(pytester).assert_outcomes(passed=2)
    lines = [json.loads(line) for line in (pytester.path / "changes.jsonl").read_text().splitlines()]
    counts = [(nodeid.split("::")[1], when, count) for nodeid, when, count in lines]
    assert counts == [
        ("test_first", "setup", 1),
        ("test_first", "call", 3),
        ("test_first", "teardown", 0),
        ("test_second", "setup", 0),
        ("test_second", "call", 0),
        ("test_second", "teardown", 2),
    ]


def test_the_fleet_goes_to_workers_as_json(tmp_path: Path) -> None:
    members = (
        Target("hvs-scratch-host1", "10.231.0.9", 22, "root", tmp_path / "key", ("primary",), "scratch"),
        Target("probe1", "198.51.100.7", 2222, "root", tmp_path / "key", ("probe",), "ssh", ("/kh",)),
    )
    state = SimpleNamespace(run_id="run-1", fleet=Fleet(members, "my.toml"))
    stash = {plugin.STATE: state}
    node = SimpleNamespace(config=SimpleNamespace(stash=stash), workerinput={})
    plugin.pytest_configure_node(node)
    assert node.workerinput["hvs_run_id"] == "run-1"
    fleet = Fleet.from_json(node.workerinput["hvs_fleet"])
    assert fleet == state.fleet
    assert fleet.one("probe").endpoint.port == 2222
    with pytest.raises(
        TargetError, match=r"role 'worker' is held by no host.*under \[\[hosts\]\] in my.toml"
    ):
        fleet.one("worker")


def test_lazy_fleet_is_not_sent_before_it_exists(tmp_path: Path) -> None:
    state = SimpleNamespace(run_id="run-2", fleet=None)
    node = SimpleNamespace(config=SimpleNamespace(stash={plugin.STATE: state}), workerinput={})
    plugin.pytest_configure_node(node)
    assert node.workerinput == {"hvs_run_id": "run-2"}


CHECK_CONFTEST = """
import json
from pathlib import Path

import pytest

import targets.plugin as plugin
from steps import ops
from steps.testing import FakeConnection, fake_host

CONNECTION = FakeConnection()


def ran(name):
    with open(Path(__file__).parent / "ran.txt", "a") as out:
        out.write(name + "\\n")


@pytest.fixture(scope="session")
def remote(request):
    state = request.config.stash[plugin.STATE]
    host = fake_host(CONNECTION, name="fake", mode=state.mode, secrets=["s3cret"])
    state.hosts.append(host)
    return host


@pytest.fixture(scope="module")
def applied(remote):
    ran("applied")
    ops.file(remote, "/etc/demo.conf", "hello s3cret\\n")
    ops.file(remote, "/etc/demo.key", "private\\n", sensitive=True)


@pytest.fixture(scope="module")
def applied_served(remote, applied):
    ran("served")
    ops.file(remote, "/etc/served.conf", "on\\n")
    assert remote.read("/etc/served.conf"), "/etc/served.conf is missing"


@pytest.fixture(scope="module")
def pushed(remote):
    ran("pushed")
    yield "image"


@pytest.fixture
def listener(remote):
    ran("listener")
    return 1


def pytest_runtest_logreport(report):
    with open("reports.jsonl", "a") as out:
        out.write(json.dumps([report.nodeid, report.when, report.outcome, report.user_properties,
                              str(report.longrepr or "")]) + "\\n")


def pytest_sessionfinish(session):
    writes = [c for c in CONNECTION.commands if c.startswith(("mktemp", "mv ", "chmod", "chown"))]
    Path("host.json").write_text(json.dumps({"uploads": CONNECTION.uploads, "writes": writes}))
"""

CHECK_TESTS = """
import pytest

pytestmark = pytest.mark.usefixtures("applied")


def test_plain():
    raise AssertionError("a check body ran")


def test_with_scaffolding(pushed, listener):
    raise AssertionError("a check body ran")


def test_with_a_second_apply_fixture(applied_served):
    raise AssertionError("a check body ran")
"""


def check_run(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, list[list[Any]]]:
    pytester.makeconftest(CHECK_CONFTEST)
    pytester.makepyfile(test_checks=CHECK_TESTS)
    pytester.makeini("[pytest]\nmarkers =\n    requires(capability): waivable capability\n")
    # A subprocess: repeated in-process runs re-import steps/ and mix class identities.
    result = pytester.runpytest_subprocess("-p", "targets.plugin", "-p", "no:cacheprovider", "-rs", *args)
    lines = (pytester.path / "reports.jsonl").read_text().splitlines()
    return result, [json.loads(line) for line in lines]


@pytest.fixture
def checkout_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path(plugin.__file__).resolve().parents[1]))
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)


@pytest.mark.usefixtures("checkout_path")
def test_check_mode_applies_in_check_mode_and_skips_every_check_body(pytester: pytest.Pytester) -> None:
    result, reports = check_run(pytester, "--check")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    outcomes = {(nodeid.split("::")[1], when): outcome for nodeid, when, outcome, _, _ in reports}
    assert {outcome for (_, when), outcome in outcomes.items() if when == "setup"} == {"skipped"}
    assert "failed" not in outcomes.values()
    reasons = {nodeid.split("::")[1]: text for nodeid, when, _, _, text in reports if when == "setup"}
    assert all("check mode: not verified, nothing was applied" in text for text in reasons.values())
    # The fixture that reads back what its apply step wrote stops on a host never built.
    assert (
        "fixture 'applied_served' stopped: AssertionError: /etc/served.conf is missing"
        in (reasons["test_with_a_second_apply_fixture"])
    )
    # Only apply fixtures ("applied", "applied_*") ran: no verification scaffolding, and
    # nothing was written on the host.
    assert (pytester.path / "ran.txt").read_text().split() == ["applied", "served"]
    assert json.loads((pytester.path / "host.json").read_text()) == {"uploads": [], "writes": []}


@pytest.mark.usefixtures("checkout_path")
def test_check_mode_reports_would_change_ops_with_redacted_diffs(pytester: pytest.Pytester) -> None:
    _, reports = check_run(pytester, "--check")
    would = [
        (nodeid.split("::")[1], when, value)
        for nodeid, when, _, props, _ in reports
        for key, value in props
        if key == "hvs_would_change"
    ]
    assert [(name, when) for name, when, _ in would] == [
        ("test_plain", "setup"),
        ("test_with_a_second_apply_fixture", "setup"),
    ]
    first = would[0][2]
    assert [entry["op"] for entry in first] == [
        "[fake] => file /etc/demo.conf",
        "[fake] => file /etc/demo.key",
    ]
    assert "+hello ********" in first[0]["diff"] and "s3cret" not in first[0]["diff"]
    assert first[1]["diff"] == "content of /etc/demo.key changes (not shown: sensitive)\n"
    assert [entry["op"] for entry in would[1][2]] == ["[fake] => file /etc/served.conf"]
    changes = {(n.split("::")[1], w): dict(p)["hvs_changes"] for n, w, _, p, _ in reports}
    assert changes[("test_plain", "setup")] == 2


@pytest.mark.usefixtures("checkout_path")
def test_apply_mode_runs_check_bodies_and_reports_no_would_change(pytester: pytest.Pytester) -> None:
    result, reports = check_run(pytester)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    calls = [outcome for _, when, outcome, _, _ in reports if when == "call"]
    assert calls == ["failed", "failed", "failed"]
    assert not [key for *_, props, _ in reports for key, _ in props if key == "hvs_would_change"]
