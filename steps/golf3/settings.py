"""The settings of Team Golf-3 (the config's [golf3] section): the tenants of the platform, each
with a Kubernetes namespace (quota, limits, RBAC, network policies), a systemd slice with CPU
and memory limits, and a network segment of its own on the host."""

from __future__ import annotations

import ipaddress
import math
import re
from decimal import Decimal
from typing import Any, ClassVar

from kubernetes.utils.quantity import parse_quantity
from pydantic import Field, field_validator, model_validator

from settings.base import CIDR, Strict, TeamSettings

# A Kubernetes namespace (an RFC 1123 label) that also starts with a letter, so that it is a
# fine systemd unit name part and interface name part too.
_TENANT_NAME = re.compile(r"[a-z]([a-z0-9-]*[a-z0-9])?")
# Interface names: IFNAMSIZ is 16 with the terminating NUL.
IFNAME_MAX = 15
# Namespaces Kubernetes or the suite's other teams own.
_RESERVED = {"default", "kube-system", "kube-public", "kube-node-lease"}
_RESERVED_PREFIXES = ("kube-", "hvsuite-check-")
# What a tenant's ResourceQuota may hold (spec.hard keys the API knows for compute and counts).
QUOTA_KEYS = frozenset(
    {
        "pods",
        "requests.cpu",
        "requests.memory",
        "limits.cpu",
        "limits.memory",
        "services",
        "configmaps",
        "secrets",
        "persistentvolumeclaims",
        "requests.storage",
    }
)
_SYSTEMD_PERCENT = re.compile(r"([1-9][0-9]{0,4})%")
# systemd.resource-control(5): bytes with an optional base-1024 suffix.
_SYSTEMD_BYTES = re.compile(r"([1-9][0-9]*)([KMGT]?)")
_SUFFIX = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def quantity(value: str) -> Decimal:
    """A Kubernetes quantity ("500m", "256Mi", "2") as a number; ValueError if it is none."""
    try:
        return parse_quantity(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{value!r} is not a Kubernetes quantity (write it like 500m, 2, 256Mi)") from exc


def systemd_bytes(value: str) -> int:
    """Pure: MemoryMax's value in bytes ("128M" -> 134217728)."""
    match = _SYSTEMD_BYTES.fullmatch(value)
    if match is None:
        raise ValueError(f"{value!r} is not a size (write it like 128M or 1G)")
    return int(match.group(1)) * _SUFFIX[match.group(2)]


class LimitRangeSettings(Strict):
    """The LimitRange of a tenant's namespace, per container: ``default`` (limits a container
    gets when it names none), ``default_request`` (its requests then) and ``max``. The
    defaults matter: a quota on requests refuses every pod that names none."""

    default: dict[str, str] = {"cpu": "200m", "memory": "64Mi"}
    default_request: dict[str, str] = {"cpu": "100m", "memory": "32Mi"}
    max: dict[str, str] = {"cpu": "500m", "memory": "256Mi"}

    @field_validator("default", "default_request", "max")
    @classmethod
    def _resources(cls, values: dict[str, str], info: Any) -> dict[str, str]:
        bad = sorted(set(values) - {"cpu", "memory"})
        if bad:
            raise ValueError(
                f"limits.{info.field_name}: {', '.join(bad)} are not container resources (use cpu and memory)"
            )
        for key, value in values.items():
            try:
                quantity(value)
            except ValueError as exc:
                raise ValueError(f"limits.{info.field_name}.{key}: {exc}") from None
        return values

    @model_validator(mode="after")
    def _ordered(self) -> LimitRangeSettings:
        problems = []
        for lower, higher in (("default_request", "default"), ("default", "max")):
            for resource, value in getattr(self, lower).items():
                bound = getattr(self, higher).get(resource)
                if bound is not None and quantity(value) > quantity(bound):
                    problems.append(
                        f"limits.{lower}.{resource} ({value}) is above limits.{higher}.{resource} "
                        f"({bound}): lower it, or raise limits.{higher}.{resource}"
                    )
        if problems:
            raise ValueError("; ".join(problems))
        return self


class TenantSettings(Strict):
    """One tenant: its namespace, slice and network segment are all named after it."""

    name: str
    # The tenant's network segment on the host: its bridge takes the first address, and the
    # network check puts two namespaces on the last two. IPv4, at most /29.
    subnet: CIDR
    # systemd's CPUQuota (percent of one CPU; above 100% spans several) and MemoryMax of the
    # tenant's slice.
    cpu_quota: str = "50%"
    memory_max: str = "128M"
    # The namespace's ResourceQuota (spec.hard).
    quota: dict[str, str] = {
        "pods": "10",
        "requests.cpu": "1",
        "requests.memory": "512Mi",
        "limits.cpu": "2",
        "limits.memory": "1Gi",
    }
    limits: LimitRangeSettings = LimitRangeSettings()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _TENANT_NAME.fullmatch(value) or len(value) > 63:
            raise ValueError(
                f"tenant name {value!r} must be a Kubernetes namespace that starts with a letter: "
                "lowercase letters, digits and '-', at most 63 characters (e.g. tenant-a)"
            )
        if value in _RESERVED or value.startswith(_RESERVED_PREFIXES):
            raise ValueError(
                f"tenant name {value!r} is a namespace Kubernetes or the suite owns; choose another "
                f"(not {', '.join(sorted(_RESERVED))}, nor kube-* or hvsuite-check-*)"
            )
        return value

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, value: str) -> str:
        network = ipaddress.ip_network(value)
        if network.version != 4 or network.prefixlen > 29:
            raise ValueError(
                f"subnet {value} must be an IPv4 network of at least 8 addresses (/29 or larger, "
                "e.g. 10.248.1.0/24): the bridge and the network check need three of them"
            )
        return value

    @field_validator("cpu_quota")
    @classmethod
    def _cpu_quota(cls, value: str) -> str:
        match = _SYSTEMD_PERCENT.fullmatch(value)
        if match is None:
            raise ValueError(
                f"cpu_quota {value!r} is not a CPUQuota: write a whole percentage of one CPU, like "
                "50% (200% is two CPUs)"
            )
        return value

    @field_validator("memory_max")
    @classmethod
    def _memory_max(cls, value: str) -> str:
        if systemd_bytes(value) < 32 * 1024**2:
            raise ValueError(
                f"memory_max {value!r} is below 32M: the tenant's processes and the stress check need "
                "more; write it like 128M or 1G"
            )
        return value

    @field_validator("quota")
    @classmethod
    def _quota(cls, values: dict[str, str]) -> dict[str, str]:
        bad = sorted(set(values) - QUOTA_KEYS)
        if bad:
            raise ValueError(
                f"quota: {', '.join(bad)} are not ResourceQuota keys the suite manages "
                f"(use {', '.join(sorted(QUOTA_KEYS))})"
            )
        for key, value in values.items():
            try:
                quantity(value)
            except ValueError as exc:
                raise ValueError(f"quota.{key}: {exc}") from None
        if not {"requests.cpu", "requests.memory"} & set(values):
            raise ValueError(
                'quota sets neither "requests.cpu" nor "requests.memory": add one (e.g. '
                '"requests.cpu" = "1"), or a tenant could take the whole cluster'
            )
        return values

    @model_validator(mode="after")
    def _limits_fit_the_quota(self) -> TenantSettings:
        # A pod that takes the LimitRange's defaults must fit the quota, or every pod is refused.
        problems = []
        for resource, value in self.limits.default_request.items():
            hard = self.quota.get(f"requests.{resource}")
            if hard is not None and quantity(value) > quantity(hard):
                problems.append(
                    f"tenant {self.name}: limits.default_request.{resource} ({value}) is above "
                    f"quota.requests.{resource} ({hard}): no pod would fit; lower the one or raise the other"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def cpu_percent(self) -> int:
        return int(self.cpu_quota.rstrip("%"))

    @property
    def memory_bytes(self) -> int:
        return systemd_bytes(self.memory_max)

    @property
    def gateway(self) -> str:
        """The bridge's address: the subnet's first host."""
        return str(next(ipaddress.ip_network(self.subnet).hosts()))

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen


class StressSettings(Strict):
    """The bounded stress runs of the slice check: CPU workers for ``cpu_seconds`` (their
    usage is measured over ``cpu_window_seconds`` of it), then a memory hog asking for
    ``memory_factor`` times the slice's MemoryMax for ``memory_seconds``."""

    cpu_seconds: int = Field(8, ge=3, le=60)
    cpu_window_seconds: int = Field(5, ge=1, le=55)
    memory_seconds: int = Field(4, ge=2, le=60)
    memory_factor: float = Field(2.0, ge=1.2, le=8)
    # How far (percent of the quota) measured CPU usage may exceed CPUQuota: CFS enforces the
    # quota per period (100 ms), so a window of seconds sees at most a period's overshoot at
    # its edges, plus accounting and timing noise of the measuring shell.
    cpu_tolerance_percent: float = Field(10.0, ge=0, le=50)

    @model_validator(mode="after")
    def _window_inside_run(self) -> StressSettings:
        if self.cpu_window_seconds + 2 > self.cpu_seconds:
            raise ValueError(
                f"golf3.stress.cpu_window_seconds ({self.cpu_window_seconds}) must end before the CPU "
                f"run does (cpu_seconds = {self.cpu_seconds}, less 2 s of start-up): raise cpu_seconds "
                f"to at least {self.cpu_window_seconds + 2}"
            )
        return self


def _default_tenants() -> list[TenantSettings]:
    return [
        TenantSettings(name="tenant-a", subnet="10.248.1.0/24"),
        TenantSettings(name="tenant-b", subnet="10.248.2.0/24"),
    ]


class Golf3Settings(TeamSettings):
    """Team Golf-3: tenants, each isolated in Kubernetes, in a slice and on a network segment."""

    section: ClassVar[str] = "golf3"

    tenants: list[TenantSettings] = Field(default_factory=_default_tenants)
    # The ServiceAccount in each tenant's namespace, allowed to run workloads there only.
    account: str = Field("tenant-admin", pattern=r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
    # The labels of the cluster's DNS pods, which every tenant's pods may reach on port 53.
    dns_pods: dict[str, str] = {"k8s-app": "kube-dns"}
    # A tenant's bridge is this prefix and its name (IFNAMSIZ allows 15 characters in all).
    bridge_prefix: str = Field("g3-", pattern=r"^[a-z][a-z0-9-]{0,7}$")
    # A tenant's slice is "<slice_prefix>-<name, '-' as '_'>.slice": a dash in a slice's name
    # nests it in another slice, so the tenant's own dashes are written as underscores.
    slice_prefix: str = Field("hvsuite_tenant", pattern=r"^[a-z][a-z0-9_]{0,31}$")
    stress: StressSettings = StressSettings()

    @model_validator(mode="after")
    def _tenants(self) -> Golf3Settings:
        problems = []
        if not self.tenants:
            problems.append(
                'golf3.tenants is empty: declare at least one ([[golf3.tenants]] name = "tenant-a")'
            )
        names = [tenant.name for tenant in self.tenants]
        problems += [
            f"golf3.tenants names {name!r} twice: give each tenant its own name"
            for name in sorted({n for n in names if names.count(n) > 1})
        ]
        for index, tenant in enumerate(self.tenants):
            bridge = self.bridge(tenant)
            if len(bridge) > IFNAME_MAX:
                room = IFNAME_MAX - len(self.bridge_prefix)
                problems.append(
                    f"golf3.tenants[{index}].name {tenant.name!r} makes the bridge name {bridge!r}, longer "
                    f"than an interface name may be ({IFNAME_MAX}): shorten the name to {room} characters "
                    "or golf3.bridge_prefix"
                )
        networks = [(t.name, ipaddress.ip_network(t.subnet)) for t in self.tenants]
        for i, (name, net) in enumerate(networks):
            for other, other_net in networks[i + 1 :]:
                if net.overlaps(other_net):
                    problems.append(
                        f"golf3.tenants: the subnets of {name} ({net}) and {other} ({other_net}) overlap: "
                        "give each tenant a subnet of its own"
                    )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def bridge(self, tenant: TenantSettings) -> str:
        return f"{self.bridge_prefix}{tenant.name}"

    def slice(self, tenant: TenantSettings) -> str:
        return f"{self.slice_prefix}-{tenant.name.replace('-', '_')}.slice"

    def problems_with(self, config: Any) -> list[str]:
        # A tenant's segment must not shadow an address the fleet, the pods, the Services or
        # the load balancer use: the host would route those into the tenant's bridge.
        taken = [
            ("scratch.subnet", config.scratch.subnet),
            ("delta.pod_subnet", config.delta.pod_subnet),
            ("delta.service_subnet", config.delta.service_subnet),
            *(("echo1.load_balancer.pool", net) for net in config.echo1.load_balancer.pool),
        ]
        problems = []
        for tenant in self.tenants:
            net = ipaddress.ip_network(tenant.subnet)
            for field, used in taken:
                used_net = ipaddress.ip_network(used)
                if used_net.version == net.version and net.overlaps(used_net):
                    problems.append(
                        f"golf3.tenants: the subnet of {tenant.name} ({net}) overlaps {field} ({used_net}): "
                        "choose a tenant subnet outside it"
                    )
        clash = sorted({t.name for t in self.tenants} & set(config.echo1.network_policies.namespaces))
        if clash:
            problems.append(
                f"golf3.tenants: {', '.join(clash)} are Echo-1's namespaces "
                "(echo1.network_policies.namespaces): give the tenants other names"
            )
        return problems


def over_quota_request(tenant: TenantSettings) -> tuple[str, Decimal, int]:
    """Pure: a pod that asks more than ``tenant``'s quota allows while each of its containers
    stays within the LimitRange's max (so the quota, not the LimitRange, must refuse it):
    ``(resource, request per container, containers)``."""
    for resource in ("cpu", "memory"):
        hard = tenant.quota.get(f"requests.{resource}")
        if hard is None:
            continue
        total = quantity(hard)
        most = tenant.limits.max.get(resource)
        per = min(quantity(most), total) if most is not None else total
        return resource, per, math.floor(total / per) + 1
    raise ValueError(f"tenant {tenant.name}: quota sets neither requests.cpu nor requests.memory")
