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
            "*--artifacts-dir=DIR*",
        ]
    )


def test_mode_comes_from_the_engine_and_settings_from_the_config(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import targets.plugin as plugin

        def test_mode(request, settings, profile):
            assert request.config.stash[plugin.STATE].mode == "verify"
            assert settings.scratch.name == "hvs-scratch"
            assert profile.name == "scratch"
        """
    )
    run(pytester, "-p", "engine.plugin", "--verify-only").assert_outcomes(passed=1)


def test_help_neither_loads_the_config_nor_contacts_a_host(pytester: pytest.Pytester) -> None:
    config = pytester.makefile(".toml", suite="[ssh]\nport = 0\n")
    result = pytester.runpytest_inprocess("-p", "targets.plugin", "--config", str(config), "--help")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*--scratch-rebuild*"])


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


def test_check_mode_reports_would_change_ops_by_host_with_redacted_diffs(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import json
        import pytest
        import targets.plugin as plugin
        from engine import contract
        from apply import ops
        from apply.testing import FakeConnection, fake_host

        @pytest.fixture(scope="module")
        def applied(request):
            state = request.config.stash[plugin.STATE]
            host = fake_host(FakeConnection(), name="hv1", mode=state.mode, secrets=["s3cret"])
            state.members["hv1"] = plugin.Member(None, host, None)
            ops.file(host, "/etc/demo.conf", "token s3cret\\n")

        def pytest_runtest_logreport(report):
            count, would = contract.changes(report)
            with open("changes.jsonl", "a") as out:
                out.write(json.dumps([report.when, count, [[w.op, w.diff] for w in would]]) + "\\n")
        """
    )
    pytester.makepyfile("def test_it(applied):\n    pass\n")
    run(pytester, "-p", "engine.plugin", "--check")
    lines = [json.loads(line) for line in (pytester.path / "changes.jsonl").read_text().splitlines()]
    setup = next(line for line in lines if line[0] == "setup")
    assert setup[1] == 1
    ((op, diff),) = setup[2]
    assert op == "[hv1] => file /etc/demo.conf"
    assert "+token ***" in diff and "s3cret" not in diff


def test_a_run_reaches_the_roles_the_firewall_names_whatever_teams_it_selects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import engine
    from engine.plan import Team
    from settings.loader import load_settings

    settings = load_settings(
        overrides={
            "protocols": [{"name": "vrrp", "team": "Alpha", "protocol": "vrrp", "sources": ["role:probe"]}]
        }
    )
    assert "probe" in settings.source_roles()
    alpha_only = Team("Alpha", 1, (), (0, 0), "test_p1_alpha.py", roles=("primary",))
    monkeypatch.setattr(engine, "teams_to_run", lambda config: [alpha_only])
    reached: list[set[str]] = []
    monkeypatch.setattr(plugin, "_resolve", lambda config, state, roles: reached.append(set(roles)))
    state = SimpleNamespace(
        settings=settings, planned=plugin.plan_hosts(settings, None), source="scratch.toml", mode="verify"
    )
    plugin._resolve_for_teams(None, state)  # type: ignore[arg-type]
    assert reached == [{"primary"} | settings.source_roles()]
