"""Team Golf-3's check helpers: tenants seen from the outside.

- Kubernetes: a tenant account's short-lived token (TokenRequest API) and an API client that
  authenticates with that token alone; ``kubectl auth can-i --as=...`` on the control plane;
  the pod that asks more than a tenant's quota allows.
- Slices: a slice's cgroup read from the kernel (cgroup v2, or v1 controllers beside the
  unified hierarchy as on a hybrid host), and a bounded stress run in the slice measured
  from it.
- Segments: network namespaces attached to the tenants' bridges by veth pairs, pings between
  them, and the team's drop counter.

Everything a helper starts (transient units, namespaces, veths) is named exactly and removed
by that name, also when the check fails.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import re
import shlex
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from apply.runner import Host
from checks.kube import Cluster
from steps.delta.kubectl import MANAGED_BY, kubectl
from steps.golf3.segments import COUNTER, TABLE
from steps.golf3.settings import Golf3Settings, StressSettings, TenantSettings, over_quota_request

# -- Kubernetes -------------------------------------------------------------------------

# The shortest lifetime the TokenRequest API grants.
TOKEN_SECONDS = 600


def account_user(namespace: str, account: str) -> str:
    return f"system:serviceaccount:{namespace}:{account}"


def account_token(cluster: Cluster, namespace: str, account: str) -> str:
    """A token for ``account`` from the TokenRequest API, valid for ten minutes (the API's
    least). It stays in this process: never printed, never written."""
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=TOKEN_SECONDS)
    )
    answer = cluster.core.create_namespaced_service_account_token(account, namespace, request)
    return answer.status.token


def as_token(cluster: Cluster, token: str) -> client.CoreV1Api:
    """The core API as the holder of ``token``: the server and CA of the operator's kubeconfig,
    without its client certificate (which the API server would authenticate first)."""
    admin = cluster.api.configuration
    configuration = client.Configuration()
    configuration.host = admin.host
    configuration.ssl_ca_cert = admin.ssl_ca_cert
    configuration.verify_ssl = admin.verify_ssl
    configuration.api_key = {"authorization": token}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    return client.CoreV1Api(client.ApiClient(configuration))


def can_i(remote: Host, user: str, verb: str, resource: str, namespace: str) -> bool:
    """``kubectl auth can-i`` on the control plane, impersonating ``user``: "yes" exits 0,
    "no" exits 1; anything else is an error of the check."""
    command = kubectl("auth", "can-i", verb, resource, "-n", namespace, f"--as={user}")
    result = remote.run(command, check=False)
    answer = result.stdout.strip()
    assert (result.exit_code, answer) in ((0, "yes"), (1, "no")), (
        f"{command}: exit {result.exit_code}: {result.stdout} {result.stderr}"
    )
    return answer == "yes"


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str
    message: str


def refusal(exc: ApiException) -> Refusal:
    """The API's Status body of a refused request."""
    body = json.loads(exc.body or "{}")
    return Refusal(exc.status, body.get("reason", ""), body.get("message", ""))


def _cpu(value: Any) -> str:
    return f"{int(value * 1000)}m"


def quota_pod(tenant: TenantSettings, image: str, name: str, *, over: bool) -> client.V1Pod:
    """A pod of ``over_quota_request``'s containers (each within the LimitRange's max, their
    sum beyond the quota), or with ``over=False`` one such container (within the quota)."""
    resource, per, count = over_quota_request(tenant)
    amount = _cpu(per) if resource == "cpu" else str(int(per))
    resources = client.V1ResourceRequirements(requests={resource: amount}, limits={resource: amount})
    containers = [
        client.V1Container(name=f"c{i}", image=image, command=["/pause"], resources=resources)
        for i in range(count if over else 1)
    ]
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=dict(MANAGED_BY)),
        spec=client.V1PodSpec(
            restart_policy="Never", automount_service_account_token=False, containers=containers
        ),
    )


# -- slices -----------------------------------------------------------------------------

# Reads a slice's cgroup: usage and throttling of CPU, the CPU quota, memory limit, peak,
# times the limit was hit and OOM kills. On cgroup v1 (systemd's hybrid layout) the usage is
# the unified hierarchy's cpu.stat (kept for every cgroup), else cpuacct.usage.
_READ_CGROUP = r"""
cg=$(systemctl show -p ControlGroup --value -- {unit})
[ -n "$cg" ] || {{ echo "no cgroup for {unit} (is it active?)" >&2; exit 3; }}
if [ -e /sys/fs/cgroup/cgroup.controllers ]; then
  d=/sys/fs/cgroup$cg
  echo layout=v2
  sed -n 's/^usage_usec /usage_usec=/p; s/^nr_throttled /nr_throttled=/p' "$d/cpu.stat"
  echo "cpu_max=$(cat "$d/cpu.max")"
  echo "memory_max=$(cat "$d/memory.max")"
  echo "memory_peak=$(cat "$d/memory.peak" 2>/dev/null)"
  sed -n 's/^max /memory_limit_hits=/p; s/^oom_kill /oom_kills=/p' "$d/memory.events"
else
  echo layout=v1
  if [ -r "/sys/fs/cgroup/unified$cg/cpu.stat" ]; then
    sed -n 's/^usage_usec /usage_usec=/p' "/sys/fs/cgroup/unified$cg/cpu.stat"
  else
    echo "usage_usec=$(( $(cat "/sys/fs/cgroup/cpuacct$cg/cpuacct.usage") / 1000 ))"
  fi
  c=/sys/fs/cgroup/cpu$cg
  sed -n 's/^nr_throttled /nr_throttled=/p' "$c/cpu.stat"
  echo "cpu_max=$(cat "$c/cpu.cfs_quota_us") $(cat "$c/cpu.cfs_period_us")"
  m=/sys/fs/cgroup/memory$cg
  echo "memory_max=$(cat "$m/memory.limit_in_bytes")"
  echo "memory_peak=$(cat "$m/memory.max_usage_in_bytes")"
  echo "memory_limit_hits=$(cat "$m/memory.failcnt")"
  sed -n 's/^oom_kill /oom_kills=/p' "$m/memory.oom_control"
fi
echo "cgroup=$cg"
echo "now_ns=$(date +%s%N)"
"""


@dataclass(frozen=True)
class CgroupReading:
    """A slice's cgroup at one instant, as the kernel accounts it."""

    layout: str
    cgroup: str
    usage_usec: int
    nr_throttled: int
    cpu_quota_usec: int | None  # None: no quota
    cpu_period_usec: int
    memory_max: int | None  # bytes; None: no limit
    memory_peak: int | None  # bytes over the cgroup's life (v1: since its last reset)
    memory_limit_hits: int  # v2 memory.events "max"; v1 memory.failcnt
    oom_kills: int
    now_ns: int

    @property
    def cpu_quota_percent(self) -> float | None:
        if self.cpu_quota_usec is None:
            return None
        return 100.0 * self.cpu_quota_usec / self.cpu_period_usec


# v1 reports "no limit" as the largest page-aligned value of a signed 64-bit counter.
_V1_UNLIMITED = 1 << 62


def parse_cgroup(output: str) -> CgroupReading:
    """Pure: ``_READ_CGROUP``'s output."""
    values = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
    quota, period = values["cpu_max"].split()
    memory_max = values["memory_max"].strip()
    peak = values.get("memory_peak", "").strip()
    return CgroupReading(
        layout=values["layout"],
        cgroup=values["cgroup"],
        usage_usec=int(values["usage_usec"]),
        nr_throttled=int(values.get("nr_throttled", "0")),
        cpu_quota_usec=None if quota in ("max", "-1") else int(quota),
        cpu_period_usec=int(period),
        memory_max=None if memory_max == "max" or int(memory_max) >= _V1_UNLIMITED else int(memory_max),
        memory_peak=int(peak) if peak else None,
        memory_limit_hits=int(values.get("memory_limit_hits", "0")),
        oom_kills=int(values.get("oom_kills", "0")),
        now_ns=int(values["now_ns"]),
    )


def read_cgroup(remote: Host, unit: str) -> CgroupReading:
    return parse_cgroup(remote.run(_READ_CGROUP.format(unit=shlex.quote(unit))).stdout)


@dataclass
class SliceFigures:
    """What one tenant's stress run measured in its slice."""

    tenant: str
    slice: str
    layout: str
    cpu_quota_percent: float
    cpu_workers: int
    window_seconds: float
    cpu_percent: float
    cpu_tolerance_percent: float
    throttled_periods: int
    memory_max: int
    memory_asked: int
    memory_peak: int | None
    memory_limit_hits: int
    oom_kills: int
    notes: list[str] = field(default_factory=list)

    @property
    def cpu_ceiling(self) -> float:
        return self.cpu_quota_percent * (1 + self.cpu_tolerance_percent / 100)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cpu_ceiling_percent": self.cpu_ceiling}


def stress_unit(tenant: TenantSettings, kind: str) -> str:
    return f"hvsuite-golf3-stress-{kind}-{tenant.name}.service"


def cpu_workers(cpu_percent: int) -> int:
    """Pure: CPU hogs that together want more than the quota (at least two)."""
    return max(2, math.ceil(cpu_percent / 100) + 1)


def _stop(remote: Host, unit: str) -> None:
    q = shlex.quote(unit)
    remote.run(
        f"systemctl stop -- {q} 2>/dev/null; systemctl reset-failed -- {q} 2>/dev/null; true", check=False
    )


def _start(remote: Host, unit: str, slice_unit: str, seconds: int, command: str) -> None:
    """``command`` as a transient unit in the slice, ended by systemd after a bound even if
    nobody stops it."""
    _stop(remote, unit)  # one an interrupted earlier run may have left
    remote.run(
        f"systemd-run --quiet --collect --unit={shlex.quote(unit)} --slice={shlex.quote(slice_unit)} "
        f"--property=RuntimeMaxSec={seconds + 30} {command}"
    )


def stress_slice(remote: Host, golf3: Golf3Settings, tenant: TenantSettings) -> SliceFigures:
    """CPU hogs in the tenant's slice, measured over a window of their run; then a memory hog
    asking for more than MemoryMax, measured by the limit hits and the peak."""
    stress: StressSettings = golf3.stress
    slice_unit = golf3.slice(tenant)
    workers = cpu_workers(tenant.cpu_percent)
    cpu = stress_unit(tenant, "cpu")
    try:
        hogs = f"stress-ng --cpu {workers} --cpu-load 100 --timeout {stress.cpu_seconds}s --quiet"
        _start(remote, cpu, slice_unit, stress.cpu_seconds, hogs)
        remote.run("sleep 1")  # the workers start
        first = read_cgroup(remote, slice_unit)
        remote.run(f"sleep {stress.cpu_window_seconds}")
        second = read_cgroup(remote, slice_unit)
    finally:
        _stop(remote, cpu)
    wall_usec = (second.now_ns - first.now_ns) / 1000
    memory = stress_unit(tenant, "memory")
    asked = int(tenant.memory_bytes * stress.memory_factor)
    try:
        before = read_cgroup(remote, slice_unit)
        reset_memory_peak(remote, before)
        hog = f"stress-ng --vm 1 --vm-bytes {asked} --vm-keep --timeout {stress.memory_seconds}s --quiet"
        _start(remote, memory, slice_unit, stress.memory_seconds, hog)
        # Until stress-ng ends by its own timeout (its unit is then collected).
        wait = f"while systemctl is-active --quiet -- {shlex.quote(memory)}; do sleep 0.5; done"
        remote.run(f"timeout {stress.memory_seconds + 20} sh -c {shlex.quote(wait)}", check=False)
        after = read_cgroup(remote, slice_unit)
    finally:
        _stop(remote, memory)
    notes = []
    if after.layout == "v2":
        notes.append("memory peak: since the slice started")
    return SliceFigures(
        tenant=tenant.name,
        slice=slice_unit,
        layout=second.layout,
        cpu_quota_percent=float(tenant.cpu_percent),
        cpu_workers=workers,
        window_seconds=round(wall_usec / 1e6, 3),
        cpu_percent=round(100.0 * (second.usage_usec - first.usage_usec) / wall_usec, 2),
        cpu_tolerance_percent=stress.cpu_tolerance_percent,
        throttled_periods=second.nr_throttled - first.nr_throttled,
        memory_max=after.memory_max or 0,
        memory_asked=asked,
        memory_peak=after.memory_peak,
        memory_limit_hits=after.memory_limit_hits - before.memory_limit_hits,
        oom_kills=after.oom_kills - before.oom_kills,
        notes=notes,
    )


def reset_memory_peak(remote: Host, reading: CgroupReading) -> None:
    """cgroup v1 keeps a resettable peak: start it afresh so the run's own is measured."""
    if reading.layout == "v1":
        remote.run(f"echo 0 > /sys/fs/cgroup/memory{shlex.quote(reading.cgroup)}/memory.max_usage_in_bytes")


def table(figures: list[SliceFigures]) -> str:
    """Pure: the figures as a Markdown table."""
    mib = 1024 * 1024
    lines = [
        "| tenant | slice | CPUQuota | measured CPU | ceiling (tolerance) | window | workers "
        "| throttled periods | MemoryMax | asked | peak | limit hits | OOM kills |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for f in figures:
        peak = f"{f.memory_peak / mib:.1f} MiB" if f.memory_peak is not None else "n/a"
        lines.append(
            f"| {f.tenant} | `{f.slice}` | {f.cpu_quota_percent:g} % | {f.cpu_percent:.1f} % "
            f"| {f.cpu_ceiling:.1f} % ({f.cpu_tolerance_percent:g} %) | {f.window_seconds:.2f} s "
            f"| {f.cpu_workers} | {f.throttled_periods} | {f.memory_max / mib:.1f} MiB "
            f"| {f.memory_asked / mib:.1f} MiB | {peak} | {f.memory_limit_hits} | {f.oom_kills} |"
        )
    notes = sorted({note for f in figures for note in f.notes} | {f"cgroup {f.layout}" for f in figures})
    return "\n".join(lines) + "\n\n" + "; ".join(notes) + "\n"


# -- segments ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """A network namespace on a tenant's bridge: a veth pair, its end inside named eth0."""

    tenant: str
    bridge: str
    netns: str
    veth: str
    address: str
    prefixlen: int
    gateway: str


def endpoints(golf3: Golf3Settings, per_tenant: int = 2) -> dict[str, list[Endpoint]]:
    """Pure: per tenant, ``per_tenant`` endpoints on the last addresses of its subnet."""
    found: dict[str, list[Endpoint]] = {}
    for index, tenant in enumerate(golf3.tenants):
        net = ipaddress.ip_network(tenant.subnet)
        last = net.broadcast_address
        found[tenant.name] = [
            Endpoint(
                tenant=tenant.name,
                bridge=golf3.bridge(tenant),
                netns=f"hvsuite-golf3-{tenant.name}-{n}",
                veth=f"g3v{index}n{n}",
                address=str(last - 1 - n),
                prefixlen=net.prefixlen,
                gateway=tenant.gateway,
            )
            for n in range(per_tenant)
        ]
    return found


def _remove(endpoint: Endpoint) -> str:
    return (
        f"ip netns delete {shlex.quote(endpoint.netns)} 2>/dev/null; "
        f"ip link delete dev {shlex.quote(endpoint.veth)} 2>/dev/null; true"
    )


def _attach(endpoint: Endpoint) -> str:
    ns, veth = shlex.quote(endpoint.netns), shlex.quote(endpoint.veth)
    return " && ".join(
        [
            f"ip netns add {ns}",
            f"ip link add {veth} type veth peer name eth0 netns {ns}",
            f"ip link set dev {veth} master {shlex.quote(endpoint.bridge)} up",
            f"ip -n {ns} address add {endpoint.address}/{endpoint.prefixlen} dev eth0",
            f"ip -n {ns} link set dev lo up",
            f"ip -n {ns} link set dev eth0 up",
            f"ip -n {ns} route add default via {endpoint.gateway}",
        ]
    )


@contextlib.contextmanager
def attached(remote: Host, groups: dict[str, list[Endpoint]]) -> Iterator[dict[str, list[Endpoint]]]:
    """Every endpoint's namespace and veth, removed by name afterwards, whatever happened."""
    every = [endpoint for group in groups.values() for endpoint in group]
    try:
        for endpoint in every:
            remote.run(_remove(endpoint))  # left by an interrupted earlier run
            remote.run(_attach(endpoint))
        yield groups
    finally:
        for endpoint in every:
            remote.run(_remove(endpoint), check=False)


@dataclass(frozen=True)
class Pings:
    source: str
    destination: str
    sent: int
    received: int


_PING = re.compile(r"(\d+) packets transmitted, (\d+) received")


def ping(remote: Host, source: Endpoint, destination: str, count: int = 3) -> Pings:
    """``count`` echo requests from ``source``'s namespace, 0.2 s apart, each answered within
    a second or lost; bounded in all."""
    command = (
        f"timeout {count + 10} ip netns exec {shlex.quote(source.netns)} "
        f"ping -n -q -c {count} -i 0.2 -W 1 {shlex.quote(destination)}"
    )
    result = remote.run(command, check=False)
    match = _PING.search(result.stdout)
    assert match, f"{command}: no ping summary: {result.stdout} {result.stderr}"
    return Pings(source.address, destination, int(match.group(1)), int(match.group(2)))


def crossing_drops(remote: Host) -> int:
    """Packets the team's named counter has counted (dropped between tenants)."""
    listing = json.loads(remote.run(f"nft -j list counter inet {TABLE} {COUNTER}").stdout)
    counters = [entry["counter"] for entry in listing["nftables"] if "counter" in entry]
    assert len(counters) == 1, listing
    return int(counters[0]["packets"])
