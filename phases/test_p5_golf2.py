"""Team Golf-2 (phase 5): performance.

Install the benchmark tools (sysbench, fio, iperf3; iperf3 on the bench-peer too), measure a
baseline (CPU, memory, disk, network to the bench-peer), apply the kernel tuning profile of a
microVM host (its own /etc/sysctl.d file; per-network-namespace keys live everywhere,
host-wide keys live where the profile does not waive host-kernel), and measure again. Then
prove that the file is valid and is what the host applies at boot, that the values are live,
and that no figure's "after" median fell below its "before" median by more than its
tolerance (golf2.tolerance_percent), with the table and the chart in the report.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import allure
import pytest

from apply.api import Applied, Context
from apply.facts import Sysctl
from checks import benchmarks, probes
from engine import apply_fixture, not_applicable
from settings.base import EffectiveProfile, Role
from settings.model import Settings
from steps.golf2 import benchmarks as tools
from steps.golf2 import tuning

# The baseline is measured before the tuning is applied (fixtures set up in this order).
pytestmark = [
    pytest.mark.usefixtures("applied_tools", "applied_peer_tools", "baseline", "applied"),
    pytest.mark.smoke,
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@apply_fixture
def applied_tools(ctx: Context) -> Applied:
    return tools.tools(ctx)


@apply_fixture
def applied_peer_tools(fleet) -> Applied:
    return tools.peer_tools(fleet.context(fleet.one(Role.BENCH_PEER)))


@pytest.fixture(scope="module")
def bench_server(fleet, settings: Settings) -> Iterator[str]:
    """The bench-peer's address, with an iperf3 server there for the length of the module."""
    peer = fleet.one(Role.BENCH_PEER)
    with benchmarks.iperf3_server(peer.remote, peer.target.address, settings.golf2.benchmarks):
        yield peer.target.address


def _compared(request: pytest.FixtureRequest) -> bool:
    # A session that runs no comparison (a selection of the tuning checks) measures nothing.
    return any(
        "comparison" in getattr(item, "fixturenames", ())
        for item in request.session.items
        if getattr(item, "module", None) is request.module
    )


@pytest.fixture(scope="module")
def baseline(request: pytest.FixtureRequest, remote, settings: Settings) -> benchmarks.Round | None:
    """The figures before the tuning (None in a session that compares nothing)."""
    if not _compared(request):
        return None
    address = request.getfixturevalue("bench_server")
    return benchmarks.measure(remote, address, settings.golf2.benchmarks, "before")


@apply_fixture
def applied(ctx: Context) -> Applied:
    return tuning.apply(ctx)


@pytest.fixture(scope="module")
def comparison(
    baseline: benchmarks.Round | None, bench_server: str, remote, settings: Settings
) -> list[benchmarks.Figure]:
    """The same benchmarks after the tuning, figure by figure against the baseline."""
    assert baseline is not None, "the baseline was not measured before the tuning"
    after = benchmarks.measure(remote, bench_server, settings.golf2.benchmarks, "after")
    return benchmarks.compare(baseline, after, settings.golf2.tolerance_percent)


@pytest.mark.task("Kernel tuning")
def test_the_profile_file_is_valid_and_holds_every_key(
    host, settings: Settings, profile: EffectiveProfile
) -> None:
    golf2 = settings.golf2
    assert host.file(tuning.SYSCTL_FILE).content_string == tuning.render_sysctl_file(golf2, profile)
    # procps parses the file and finds each key it sets on this kernel; it writes nothing.
    host.check_output(f"sysctl --dry-run --load={tuning.SYSCTL_FILE}")
    if golf2.host_sysctls:
        # The host-wide keys, commented out where host-kernel is waived, are valid keys here too.
        host.check_output(tuning.validate_command(golf2.host_sysctls))


@pytest.mark.task("Kernel tuning")
def test_the_profile_is_what_the_host_applies_at_boot(
    host, settings: Settings, profile: EffectiveProfile
) -> None:
    # systemd-sysctl reads every sysctl.d directory in this order; the last assignment wins.
    merged = host.check_output("systemd-analyze cat-config sysctl.d")
    effective = tuning.last_assignments(merged)
    wanted = tuning.live_sysctls(settings.golf2, profile)
    assert {key: effective.get(key) for key in wanted} == {
        key: (tuning.SYSCTL_FILE, v) for key, v in wanted.items()
    }


@pytest.mark.task("Kernel tuning")
def test_the_namespaced_sysctls_are_live(host, settings: Settings) -> None:
    namespaced = settings.golf2.namespaced_sysctls
    if not namespaced:
        not_applicable("golf2.namespaced_sysctls is empty: no per-namespace key is tuned")
    live = {key: probes.read_fact(host, Sysctl(key)) for key in namespaced}
    assert live == {key: " ".join(value.split()) for key, value in namespaced.items()}


@pytest.mark.task("Kernel tuning")
@pytest.mark.requires("host-kernel")
def test_the_host_wide_sysctls_and_modules_are_live(host, settings: Settings) -> None:
    golf2 = settings.golf2
    if not golf2.host_sysctls:
        not_applicable("golf2.host_sysctls is empty: no host-wide key is tuned")
    live = {key: probes.read_fact(host, Sysctl(key)) for key in golf2.host_sysctls}
    assert live == {key: " ".join(value.split()) for key, value in golf2.host_sysctls.items()}
    for module in tuning.modules(golf2):
        assert module in host.file(tuning.MODULES_FILE).content_string.split()
        assert host.file(f"/sys/module/{module}").is_directory, f"{module} is not loaded"


@pytest.mark.task("Benchmarking")
@pytest.mark.full
def test_before_and_after_figures_are_reported(
    comparison: list[benchmarks.Figure], settings: Settings, reports_dir: Path, target
) -> None:
    repetitions = settings.golf2.benchmarks.repetitions
    for figure in comparison:
        for label, samples in (("before", figure.before), ("after", figure.after)):
            assert len(samples) == repetitions, (figure.name, label, samples)
            assert all(math.isfinite(v) and v > 0 for v in samples), (figure.name, label, samples)
    table = benchmarks.table(comparison)
    png = benchmarks.chart(comparison, f"Golf-2 on {target.name}: before and after the tuning")
    assert png.startswith(PNG_SIGNATURE)
    for suffix, data in (
        (".md", table.encode()),
        (".png", png),
        (".json", benchmarks.as_json(comparison).encode()),
    ):
        (reports_dir / f"golf2-benchmarks{suffix}").write_bytes(data)
    allure.attach(table, name="before and after (medians)", attachment_type=allure.attachment_type.TEXT)
    allure.attach(png, name="before and after (chart)", attachment_type=allure.attachment_type.PNG)


@pytest.mark.task("Optimization")
@pytest.mark.full
def test_no_figure_regressed_beyond_its_tolerance(comparison: list[benchmarks.Figure]) -> None:
    regressed = [
        f"{f.name}: {f.before_median:.6g} -> {f.after_median:.6g} {f.unit} ({f.change_percent:+.1f} %, "
        f"tolerance -{f.tolerance_percent:g} %)"
        for f in comparison
        if f.regressed
    ]
    assert not regressed, "\n".join(["", *regressed, "", benchmarks.table(comparison)])
