"""Team Golf-3's steps as data: the settings it accepts, the documents and files it renders
(validated offline against Kubernetes' schemas and by nft where the controller has it) and
the commands it would run on a host. No SSH (see apply.testing)."""

from __future__ import annotations

import json
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from apply.facts import AptListsAge, CommandSucceeds, DebPackages, FileInfo, ServiceState
from apply.testing import FakeConnection, fake_context, fake_host
from settings.loader import load_settings
from settings.model import Settings
from steps.delta.kubectl import KUBECTL, MANAGED_BY, MANIFEST_DIR
from steps.golf3 import segments, slices, tenants
from steps.golf3.settings import Golf3Settings, TenantSettings, over_quota_request

SETTINGS = load_settings()
GOLF3 = SETTINGS.golf3
K8S_VERSION = SETTINGS.delta.release.version
MANIFEST = f"{MANIFEST_DIR}/{tenants.MANIFEST}.yaml"
ACTIVE = "LoadState=loaded\nActiveState=active\nUnitFileState=enabled\nNeedDaemonReload=no\n"
# What systemd says of a unit file just written (the fake's answers do not change as it runs).
INACTIVE = "LoadState=loaded\nActiveState=inactive\nUnitFileState=disabled\nNeedDaemonReload=no\n"


def _tenant(**values: Any) -> dict[str, Any]:
    return {"name": "tenant-a", "subnet": "10.248.1.0/24", **values}


def _with(**golf3: Any) -> Settings:
    return SETTINGS.model_copy(update={"golf3": Golf3Settings(**golf3)})


def _link(bridge: str, address: str | None, up: bool = True) -> str:
    addresses = []
    if address:
        local, prefix = address.split("/")
        addresses = [{"family": "inet", "local": local, "prefixlen": int(prefix)}]
    flags = ["BROADCAST", "MULTICAST", *(["UP"] if up else [])]
    return json.dumps(
        [{"ifname": bridge, "flags": flags, "linkinfo": {"info_kind": "bridge"}, "addr_info": addresses}]
    )


def _units(golf3: Golf3Settings) -> dict[str, str]:
    """Every unit file the steps write: path -> content."""
    files = {f"{slices.UNIT_DIR}/{golf3.slice(t)}": slices.render_slice(golf3, t) for t in golf3.tenants}
    files |= {
        f"{slices.UNIT_DIR}/{segments.segment_unit(t)}": segments.render_segment(golf3, t)
        for t in golf3.tenants
    }
    return files


def fresh() -> FakeConnection:
    """A host where none of the team's things exist yet."""
    conn = FakeConnection()
    conn.set_fact(DebPackages(), "")
    conn.set_fact(AptListsAge(), "now=1000\nnewest=\n")
    for tenant in GOLF3.tenants:
        conn.set_fact(ServiceState(GOLF3.slice(tenant)), INACTIVE)
        conn.set_fact(ServiceState(segments.segment_unit(tenant)), INACTIVE)
    conn.set_fact(CommandSucceeds(f"{KUBECTL} diff -f {MANIFEST} >/dev/null"), "no\n")
    return conn


def built(golf3: Golf3Settings = GOLF3) -> FakeConnection:
    """A host the team's steps have built with ``golf3``."""
    conn = FakeConnection()
    conn.set_fact(DebPackages(), "".join(f"{p}\t1.0\tii \n" for p in slices.PACKAGES + segments.PACKAGES))
    files = _units(golf3)
    manifest = yaml.safe_dump_all(tenants.documents(golf3), sort_keys=False)
    files[MANIFEST] = manifest
    table = segments.render_table(golf3)
    files[segments.RULES_FILE] = table
    for path, content in files.items():
        conn.files[path] = content.encode()
        mode = "600" if path == MANIFEST else "644"
        conn.set_fact(FileInfo(path), f"regular file|root|root|{mode}|{len(content)}\n")
    conn.set_fact(FileInfo(MANIFEST_DIR), "directory|root|root|700|4096\n")
    conn.set_fact(CommandSucceeds(f"{KUBECTL} diff -f {MANIFEST} >/dev/null"), "yes\n")
    conn.respond(tenants.LIST_TENANT_NAMESPACES, (0, "".join(f"{t.name}\n" for t in golf3.tenants), ""))
    for tenant in golf3.tenants:
        conn.set_fact(ServiceState(golf3.slice(tenant)), ACTIVE)
        conn.set_fact(ServiceState(segments.segment_unit(tenant)), ACTIVE)
        conn.set_fact(
            segments.Link(golf3.bridge(tenant)), _link(golf3.bridge(tenant), segments.address(tenant))
        )
    conn.set_fact(segments.LiveTableDigest(), table)
    conn.set_fact(
        slices.UnitFiles(slices.UNIT_DIR, f"{golf3.slice_prefix}-*.slice"),
        "".join(f"{golf3.slice(t)}\n" for t in golf3.tenants),
    )
    conn.set_fact(
        slices.UnitFiles(slices.UNIT_DIR, f"{segments.UNIT_PREFIX}*.service"),
        "".join(f"{segments.segment_unit(t)}\n" for t in golf3.tenants),
    )
    return conn


def _apply_all(conn: FakeConnection, settings: Settings = SETTINGS, mode: str = "apply") -> bool:
    ctx = fake_context(fake_host(conn, mode=mode), settings, profile="scratch")  # type: ignore[arg-type]
    results = [tenants.apply(ctx), slices.apply(ctx), segments.apply(ctx)]
    return any(result.changed for result in results)


# -- settings --------------------------------------------------------------------------


def test_the_defaults_declare_two_tenants_with_their_own_subnets() -> None:
    assert [t.name for t in GOLF3.tenants] == ["tenant-a", "tenant-b"]
    assert [GOLF3.bridge(t) for t in GOLF3.tenants] == ["g3-tenant-a", "g3-tenant-b"]
    assert [GOLF3.slice(t) for t in GOLF3.tenants] == [
        "hvsuite_tenant-tenant_a.slice",
        "hvsuite_tenant-tenant_b.slice",
    ]
    assert GOLF3.tenants[0].gateway == "10.248.1.1" and GOLF3.tenants[0].memory_bytes == 128 * 1024**2


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (_tenant(name="Tenant_A"), r"tenant name 'Tenant_A' must be a Kubernetes namespace"),
        (_tenant(name="1tenant"), r"must be a Kubernetes namespace that starts with a letter"),
        (_tenant(name="kube-system"), r"'kube-system' is a namespace Kubernetes or the suite owns"),
        (_tenant(name="hvsuite-check-1"), r"Kubernetes or the suite owns"),
        (_tenant(subnet="10.248.1.0/30"), r"subnet 10\.248\.1\.0/30 must be an IPv4 network of at least 8"),
        (_tenant(subnet="fd00::/64"), r"must be an IPv4 network"),
        (_tenant(subnet="10.248.1"), r"is not a CIDR"),
        (_tenant(cpu_quota="0.5"), r"cpu_quota '0\.5' is not a CPUQuota: write a whole percentage"),
        (_tenant(memory_max="128MB"), r"'128MB' is not a size \(write it like 128M or 1G\)"),
        (_tenant(memory_max="1M"), r"memory_max '1M' is below 32M"),
        (_tenant(quota={"requests.cpu": "1", "cpus": "2"}), r"quota: cpus are not ResourceQuota keys"),
        (
            _tenant(quota={"requests.cpu": "lots"}),
            r"quota\.requests\.cpu: 'lots' is not a Kubernetes quantity",
        ),
        (_tenant(quota={"pods": "3"}), r'quota sets neither "requests\.cpu" nor "requests\.memory"'),
        (
            _tenant(limits={"default": {"cpu": "600m"}, "max": {"cpu": "500m"}}),
            r"limits\.default\.cpu \(600m\) is above limits\.max\.cpu \(500m\)",
        ),
        (
            _tenant(limits={"default_request": {"gpu": "1"}}),
            r"limits\.default_request: gpu are not container resources",
        ),
        (
            _tenant(quota={"requests.cpu": "50m"}),
            r"tenant tenant-a: limits\.default_request\.cpu \(100m\) is above quota\.requests\.cpu \(50m\)",
        ),
    ],
)
def test_a_bad_tenant_is_refused_naming_the_field_and_the_fix(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TenantSettings(**values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"tenants": []}, r"golf3\.tenants is empty: declare at least one"),
        (
            {"tenants": [_tenant(), _tenant(subnet="10.248.2.0/24")]},
            r"golf3\.tenants names 'tenant-a' twice",
        ),
        (
            {"tenants": [_tenant(name="tenant-with-long-name")]},
            r"golf3\.tenants\[0\]\.name 'tenant-with-long-name' makes the bridge name "
            r"'g3-tenant-with-long-name', longer than an interface name may be \(15\): "
            r"shorten the name to 12 characters",
        ),
        (
            {"tenants": [_tenant(), _tenant(name="tenant-b", subnet="10.248.1.128/25")]},
            r"the subnets of tenant-a \(10\.248\.1\.0/24\) and tenant-b \(10\.248\.1\.128/25\) overlap",
        ),
        ({"account": "Admin"}, r"account"),
        ({"bridge_prefix": "golf3-tenant-"}, r"bridge_prefix"),
        ({"slice_prefix": "hvsuite-tenant"}, r"slice_prefix"),
        (
            {"stress": {"cpu_seconds": 5, "cpu_window_seconds": 5}},
            r"cpu_window_seconds \(5\) must end before",
        ),
    ],
)
def test_bad_settings_are_refused_naming_the_field(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Golf3Settings(**values)


@pytest.mark.parametrize(
    ("subnet", "field"),
    [
        ("10.231.0.0/16", "scratch.subnet"),
        ("10.244.3.0/24", "delta.pod_subnet"),
        ("10.100.0.0/24", "delta.service_subnet"),
    ],
)
def test_a_tenant_subnet_over_the_fleets_pods_or_services_is_refused(subnet: str, field: str) -> None:
    golf3 = Golf3Settings(tenants=[_tenant(subnet=subnet)])
    problems = golf3.problems_with(SETTINGS)
    assert any(
        f"overlaps {field}" in problem and "choose a tenant subnet outside it" in problem
        for problem in problems
    )


def test_a_tenant_named_as_echo1s_namespace_is_refused() -> None:
    namespace = SETTINGS.echo1.network_policies.namespaces[0]
    golf3 = Golf3Settings(tenants=[_tenant(name=namespace)])
    assert any("are Echo-1's namespaces" in problem for problem in golf3.problems_with(SETTINGS))


def test_the_default_config_has_no_cross_team_problem() -> None:
    assert GOLF3.problems_with(SETTINGS) == []


def test_the_over_quota_pod_fits_the_limit_range_and_exceeds_the_quota() -> None:
    tenant = GOLF3.tenants[0]
    resource, per, count = over_quota_request(tenant)
    assert (resource, per, count) == ("cpu", Decimal("0.5"), 3)
    assert per <= Decimal("0.5") and per * count > Decimal("1") and per * (count - 1) <= Decimal("1")
    memory_only = TenantSettings(**_tenant(quota={"requests.memory": "512Mi"}))
    resource, per, count = over_quota_request(memory_only)
    assert resource == "memory" and per == 256 * 1024**2 and per * count > 512 * 1024**2


# -- rendered documents and files ------------------------------------------------------


def test_each_tenant_gets_its_namespace_quota_limits_rbac_and_policies() -> None:
    docs = tenants.tenant_documents(GOLF3, GOLF3.tenants[0])
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("Namespace", "tenant-a"),
        ("ResourceQuota", tenants.QUOTA),
        ("LimitRange", tenants.LIMITS),
        ("ServiceAccount", "tenant-admin"),
        ("Role", "tenant-admin"),
        ("RoleBinding", "tenant-admin"),
        ("NetworkPolicy", tenants.DEFAULT_DENY),
        ("NetworkPolicy", tenants.ALLOW_OWN),
    ]
    assert all(d["metadata"]["labels"].items() >= MANAGED_BY.items() for d in docs)
    assert docs[0]["metadata"]["labels"][tenants.TENANT_LABEL] == "tenant-a"
    assert all(d["metadata"].get("namespace", "tenant-a") == "tenant-a" for d in docs)
    # The account gets nothing in RBAC's own group: it cannot grant itself more.
    assert not any("rbac.authorization.k8s.io" in rule["apiGroups"] for rule in docs[4]["rules"])
    allow = docs[7]["spec"]
    assert allow["ingress"] == [{"from": [{"podSelector": {}}]}]


def test_the_documents_are_valid_kubernetes_objects() -> None:
    for document in tenants.documents(GOLF3):
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_the_slice_unit_carries_the_tenants_limits() -> None:
    text = slices.render_slice(GOLF3, GOLF3.tenants[0])
    assert "CPUQuota=50%\n" in text and "MemoryMax=128M\n" in text
    assert "WantedBy=slices.target" in text


def test_the_segment_unit_builds_and_removes_the_bridge() -> None:
    text = segments.render_segment(GOLF3, GOLF3.tenants[1])
    assert "ip address replace 10.248.2.1/24 dev g3-tenant-b" in text
    assert "ExecStop=-/sbin/ip link delete dev g3-tenant-b" in text


def test_the_table_drops_between_every_two_tenants_and_counts() -> None:
    three = Golf3Settings(
        tenants=[
            _tenant(),
            _tenant(name="b", subnet="10.248.2.0/24"),
            _tenant(name="c", subnet="10.248.3.0/24"),
        ]
    )
    rules = segments.isolation_rules(three)
    assert rules[0].startswith(
        'iifname "g3-tenant-a" oifname { "g3-b", "g3-c" } counter name "tenant_crossings" drop'
    )
    assert len(rules) == 3
    text = segments.render_table(three)
    assert "flush ruleset" not in text and "hvsuite_filter" not in text
    assert segments.digest_of(text) is not None
    # The digest follows the rules.
    assert segments.digest_of(text) != segments.digest_of(segments.render_table(GOLF3))
    assert segments.isolation_rules(Golf3Settings(tenants=[_tenant()])) == []


def _nft_checks() -> bool:
    if shutil.which("nft") is None:
        return False
    return subprocess.run(["nft", "-c", "list", "tables"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _nft_checks(), reason="nft cannot check rulesets on this controller")
def test_nft_accepts_the_table(tmp_path: Path) -> None:
    path = tmp_path / "golf3.nft"
    path.write_text(segments.render_table(GOLF3))
    result = subprocess.run(["nft", "-c", "-f", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# -- the steps -------------------------------------------------------------------------


def test_a_fresh_host_gets_everything() -> None:
    conn = fresh()
    assert _apply_all(conn)
    assert yaml.safe_load_all(conn.files[MANIFEST]) is not None
    assert list(yaml.safe_load_all(conn.files[MANIFEST])) == tenants.documents(GOLF3)
    assert f"{KUBECTL} apply -f {MANIFEST}" in conn.commands
    for path, content in _units(GOLF3).items():
        assert conn.files[path] == content.encode()
    assert conn.files[segments.RULES_FILE] == segments.render_table(GOLF3).encode()
    assert any(c.startswith("DEBIAN_FRONTEND") and "stress-ng" in c for c in conn.commands)
    assert "systemctl daemon-reload" in conn.commands
    for tenant in GOLF3.tenants:
        assert f"systemctl start -- {GOLF3.slice(tenant)}" in conn.commands
        assert f"systemctl enable -- {segments.segment_unit(tenant)}" in conn.commands
    assert conn.commands.count(f"nft -f {segments.RULES_FILE}") == 1
    # Unit files are verified by systemd-analyze, the table by nft, before they replace anything.
    assert any("systemd-analyze verify" in c and "hvsuite_tenant-tenant_a.slice" in c for c in conn.commands)
    assert any(c.startswith("nft -c -f ") for c in conn.commands)
    assert not any("flush ruleset" in c or "hvsuite_filter" in c for c in conn.commands)


def test_a_second_run_changes_nothing() -> None:
    conn = built()
    assert not _apply_all(conn), [c for c in conn.commands]


def test_check_mode_records_what_would_change_and_runs_nothing() -> None:
    conn = fresh()
    ctx = fake_context(fake_host(conn, mode="check"), SETTINGS, profile="scratch")
    results = [tenants.apply(ctx), slices.apply(ctx), segments.apply(ctx)]
    assert all(result.changed for result in results)
    assert conn.uploads == []
    assert not any(
        c.startswith(("systemctl start", "systemctl enable", "nft -f", f"{KUBECTL} apply", "DEBIAN_FRONTEND"))
        for c in conn.commands
    )


def test_a_drifted_bridge_is_rebuilt_alone() -> None:
    conn = built()
    tenant = GOLF3.tenants[1]
    conn.set_fact(segments.Link(GOLF3.bridge(tenant)), _link(GOLF3.bridge(tenant), None))
    assert _apply_all(conn)
    changing = [c for c in conn.commands if c.startswith("systemctl ") and not c.startswith("systemctl show")]
    assert changing == [f"systemctl restart -- {segments.segment_unit(tenant)}"]


def test_a_reloaded_ruleset_without_the_table_gets_it_back() -> None:
    conn = built()
    conn.set_fact(segments.LiveTableDigest(), "")
    assert _apply_all(conn)
    assert conn.commands.count(f"nft -f {segments.RULES_FILE}") == 1
    assert not any(c.startswith(("systemctl start", "systemctl restart")) for c in conn.commands)


def test_a_tenant_no_longer_declared_is_removed_everywhere() -> None:
    old = Golf3Settings(
        tenants=[*GOLF3.tenants, TenantSettings(**_tenant(name="gone", subnet="10.248.9.0/24"))]
    )
    conn = built(old)
    # The config now declares only the defaults; the host still holds "gone".
    for path, content in _units(GOLF3).items():
        conn.files[path] = content.encode()
    conn.files[MANIFEST] = yaml.safe_dump_all(tenants.documents(GOLF3), sort_keys=False).encode()
    conn.files[segments.RULES_FILE] = segments.render_table(GOLF3).encode()
    conn.set_fact(segments.LiveTableDigest(), segments.render_table(GOLF3))
    assert _apply_all(conn)
    assert f"{KUBECTL} delete namespace gone --ignore-not-found --timeout=180s" in conn.commands
    assert "systemctl disable --now -- hvsuite_tenant-gone.slice" in conn.commands
    assert "systemctl disable --now -- hvsuite-golf3-segment-gone.service" in conn.commands
    assert f"rm -f -- {slices.UNIT_DIR}/hvsuite-golf3-segment-gone.service" in conn.commands
    # Nothing of the declared tenants is touched.
    changing = [c for c in conn.commands if c.startswith(("systemctl", f"{KUBECTL} delete", "rm "))]
    assert not any("tenant-a" in c for c in changing if not c.startswith("systemctl show")), changing


def test_verify_mode_changes_nothing_and_reads_nothing_it_would_change() -> None:
    conn = fresh()
    assert not _apply_all(conn, mode="verify")
    assert conn.uploads == []
