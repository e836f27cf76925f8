"""Team Golf-3's check helpers as data (checks/tenancy.py): the cgroup readings they parse on
both cgroup layouts, the stress run's commands and figures, the endpoints and pings of the
network check, and the over-quota pod. No SSH: a fake host answers the commands."""

from __future__ import annotations

import re

import pytest

from apply.testing import FakeConnection, fake_host
from checks import tenancy
from settings.loader import load_settings

GOLF3 = load_settings().golf3

V1 = """layout=v1
usage_usec=1035828
nr_throttled=22
cpu_max=50000 100000
memory_max=134217728
memory_peak=134217728
memory_limit_hits=851
oom_kill 0
oom_kills=0
cgroup=/hvsuite_tenant.slice/hvsuite_tenant-tenant_a.slice
now_ns=1796488497799766082
"""
V2 = """layout=v2
usage_usec=5000000
nr_throttled=3
cpu_max=max 100000
memory_max=max
memory_peak=
memory_limit_hits=0
oom_kills=1
cgroup=/hvsuite_tenant.slice/hvsuite_tenant-tenant_b.slice
now_ns=1000
"""


def test_a_v1_reading_has_quota_limit_and_peak() -> None:
    reading = tenancy.parse_cgroup(V1)
    assert reading.layout == "v1" and reading.cpu_quota_percent == 50.0
    assert reading.memory_max == 128 * 1024**2 and reading.memory_peak == 128 * 1024**2
    assert (reading.usage_usec, reading.nr_throttled, reading.memory_limit_hits) == (1035828, 22, 851)


def test_a_v2_reading_without_limits_says_so() -> None:
    reading = tenancy.parse_cgroup(V2)
    assert reading.cpu_quota_percent is None and reading.memory_max is None and reading.memory_peak is None
    assert reading.oom_kills == 1


def test_v1s_unlimited_value_is_no_limit() -> None:
    reading = tenancy.parse_cgroup(V1.replace("memory_max=134217728", "memory_max=9223372036854771712"))
    assert reading.memory_max is None


def test_hogs_always_want_more_than_the_quota() -> None:
    assert [tenancy.cpu_workers(p) for p in (10, 50, 100, 150, 300)] == [2, 2, 2, 3, 4]


def _reading(usage: int, throttled: int, hits: int, now_ns: int) -> str:
    return (
        V1.replace("usage_usec=1035828", f"usage_usec={usage}")
        .replace("nr_throttled=22", f"nr_throttled={throttled}")
        .replace("memory_limit_hits=851", f"memory_limit_hits={hits}")
        .replace("now_ns=1796488497799766082", f"now_ns={now_ns}")
    )


def test_a_stress_run_is_bounded_measured_and_cleaned_up() -> None:
    readings = iter(
        [
            _reading(1_000_000, 10, 5, 0),  # CPU window start
            _reading(3_500_000, 60, 5, 5_000_000_000),  # 2.5 s of CPU in 5 s: 50 %
            _reading(3_600_000, 60, 5, 6_000_000_000),  # before the memory hog
            _reading(3_700_000, 60, 905, 11_000_000_000),  # after it
        ]
    )
    conn = FakeConnection()
    conn.respond(re.compile(r"(?s)\ncg=\$\(systemctl show .*"), lambda _: (0, next(readings), ""))
    tenant = GOLF3.tenants[0]
    figures = tenancy.stress_slice(fake_host(conn), GOLF3, tenant)
    assert figures.cpu_percent == 50.0 and figures.window_seconds == 5.0
    assert figures.throttled_periods == 50 and figures.memory_limit_hits == 900
    assert figures.memory_asked == 2 * tenant.memory_bytes and figures.cpu_ceiling == pytest.approx(55.0)
    runs = [c for c in conn.commands if c.startswith("systemd-run")]
    assert len(runs) == 2
    assert all(
        "--collect" in c and "RuntimeMaxSec=" in c and f"--slice={GOLF3.slice(tenant)}" in c for c in runs
    )
    assert "--timeout 8s" in runs[0] and f"--vm-bytes {2 * tenant.memory_bytes}" in runs[1]
    # Each unit is stopped by its exact name afterwards, and v1's peak was reset before the hog.
    for kind in ("cpu", "memory"):
        unit = tenancy.stress_unit(tenant, kind)
        assert any(c.startswith(f"systemctl stop -- {unit}") for c in conn.commands), unit
    assert any(c.endswith("memory.max_usage_in_bytes") and c.startswith("echo 0 >") for c in conn.commands)
    assert "| tenant-a |" in tenancy.table([figures])


def test_a_failed_stress_start_still_stops_its_unit() -> None:
    conn = FakeConnection()
    conn.respond(re.compile(r"systemd-run .*"), (1, "", "Failed to start transient service unit"))
    with pytest.raises(Exception, match="Failed to start"):
        tenancy.stress_slice(fake_host(conn), GOLF3, GOLF3.tenants[0])
    unit = tenancy.stress_unit(GOLF3.tenants[0], "cpu")
    assert conn.commands[-1].startswith(f"systemctl stop -- {unit}")


def test_endpoints_are_short_named_on_the_tenants_last_addresses() -> None:
    groups = tenancy.endpoints(GOLF3)
    a0, a1 = groups["tenant-a"]
    assert (a0.address, a1.address, a0.gateway) == ("10.248.1.254", "10.248.1.253", "10.248.1.1")
    assert a0.bridge == "g3-tenant-a" and a0.netns == "hvsuite-golf3-tenant-a-0"
    every = [e for group in groups.values() for e in group]
    assert all(len(e.veth) <= 15 for e in every) and len({e.veth for e in every}) == len(every)


def test_namespaces_are_removed_by_name_even_when_the_body_fails() -> None:
    conn = FakeConnection()
    groups = tenancy.endpoints(GOLF3)
    with pytest.raises(RuntimeError), tenancy.attached(fake_host(conn), groups):
        raise RuntimeError("a check failed")
    removals = [c for c in conn.commands if c.startswith("ip netns delete")]
    names = {e.netns for group in groups.values() for e in group}
    assert {c.split()[3] for c in removals[-len(names) :]} == names
    assert any(
        "ip link add g3v0n0 type veth peer name eth0 netns hvsuite-golf3-tenant-a-0" in c
        for c in conn.commands
    )


def test_ping_counts_what_was_sent_and_received() -> None:
    conn = FakeConnection()
    conn.respond(
        re.compile(r"timeout \d+ ip netns exec .*"),
        (
            1,
            "--- 10.248.2.253 ping statistics ---\n3 packets transmitted, 0 received, 100% packet loss\n",
            "",
        ),
    )
    endpoint = tenancy.endpoints(GOLF3)["tenant-a"][0]
    pings = tenancy.ping(fake_host(conn), endpoint, "10.248.2.253")
    assert (pings.sent, pings.received) == (3, 0)
    assert "-c 3" in conn.commands[-1] and "-W 1" in conn.commands[-1]


def test_the_drop_counter_is_read_from_nft() -> None:
    conn = FakeConnection()
    conn.respond(
        "nft -j list counter inet hvsuite_golf3 tenant_crossings",
        (0, '{"nftables": [{"metainfo": {}}, {"counter": {"name": "tenant_crossings", "packets": 6}}]}', ""),
    )
    assert tenancy.crossing_drops(fake_host(conn)) == 6


def test_the_over_quota_pod_asks_beyond_the_quota_and_one_container_fits() -> None:
    tenant = GOLF3.tenants[0]
    over = tenancy.quota_pod(tenant, "pause:3", "p", over=True)
    fits = tenancy.quota_pod(tenant, "pause:3", "p", over=False)
    assert [c.resources.requests for c in over.spec.containers] == [{"cpu": "500m"}] * 3
    assert all(c.resources.limits == c.resources.requests for c in over.spec.containers)
    assert len(fits.spec.containers) == 1
    assert over.metadata.labels == {"app.kubernetes.io/managed-by": "hvsuite"}
