"""The settings of Team Golf-2 (the config's [golf2] section): the kernel tuning profile of a
microVM host and the benchmarks measured before and after it."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from settings.base import Strict, TeamSettings, Waiver

_KEY = re.compile(r"[a-z0-9_]+(\.[a-z0-9_-]+)+")
# A value as sysctl.d(5) writes it: words separated by blanks ("4096 131072 33554432", "bbr").
_VALUE = re.compile(r"[A-Za-z0-9_.:/-]+( [A-Za-z0-9_.:/-]+)*")

# The figures each benchmark round measures: name -> (what, unit). Every one is higher-better.
FIGURES: dict[str, tuple[str, str]] = {
    "cpu": ("CPU, sysbench cpu (1 thread)", "events/s"),
    "memory": ("memory, sysbench memory (1 MiB blocks, 1 thread)", "MiB/s"),
    "disk_read": ("disk, fio 4 KiB random reads (randrw 50/50)", "IOPS"),
    "disk_write": ("disk, fio 4 KiB random writes (randrw 50/50)", "IOPS"),
    "net_send": ("network, iperf3 to the bench-peer", "Mbit/s"),
    "net_receive": ("network, iperf3 from the bench-peer (--reverse)", "Mbit/s"),
}


class Benchmarks(Strict):
    """What one round of benchmarks runs, each bounded in time and size. A round is run
    ``repetitions`` times before the tuning and as often after; medians are compared."""

    repetitions: int = Field(5, ge=1, le=9)
    # sysbench cpu: primes up to this bound per event, for `cpu_seconds` (--time).
    cpu_seconds: int = Field(1, ge=1, le=30)
    cpu_max_prime: int = Field(20000, ge=1000, le=1_000_000)
    # sysbench memory: 1 MiB block writes for `memory_seconds` (--time).
    memory_seconds: int = Field(1, ge=1, le=30)
    # fio: one file of `disk_size_mib` in `disk_directory` (removed after each run), 4 KiB
    # random reads and writes for `disk_seconds`; O_DIRECT unless `disk_direct` is off.
    disk_directory: str = Field("/var/tmp", pattern=r"^/[A-Za-z0-9_./-]*$")
    disk_size_mib: int = Field(64, ge=8, le=4096)
    disk_seconds: int = Field(2, ge=1, le=60)
    disk_direct: bool = True
    # iperf3 from the primary to the bench-peer (a server the checks start there for the
    # length of the team and stop by its unit's name), `network_seconds` each way.
    network_seconds: int = Field(2, ge=1, le=60)
    network_port: int = Field(5201, ge=1024, le=65535)

    @property
    def round_seconds(self) -> int:
        """The benchmarks' own running time in one repetition (without SSH and file layout)."""
        return self.cpu_seconds + self.memory_seconds + self.disk_seconds + 2 * self.network_seconds


class Golf2Settings(TeamSettings):
    """Team Golf-2: a tuning profile for microVM hosts, measured before and after."""

    section: ClassVar[str] = "golf2"

    # Per-network-namespace net.* keys: set live everywhere, a scratch server included (its
    # own network namespace). Measured writable inside a podman server's namespace on a
    # 6.18 kernel; net.core.[rw]mem_max and net.netfilter.nf_conntrack_max are read-only
    # there and net.core.netdev_max_backlog absent, so they are host-wide below.
    namespaced_sysctls: dict[str, str] = {
        # Listen and SYN backlogs of the API servers and proxies on the host.
        "net.core.somaxconn": "8192",
        "net.ipv4.tcp_max_syn_backlog": "8192",
        # TCP autotuning may grow a socket's buffers to 32 MiB (VM images, migrations).
        "net.ipv4.tcp_rmem": "4096 262144 33554432",
        "net.ipv4.tcp_wmem": "4096 65536 33554432",
        # Long-lived connections keep their window after a pause; PMTU black holes of
        # tunnelled guest traffic are probed around.
        "net.ipv4.tcp_slow_start_after_idle": "0",
        "net.ipv4.tcp_mtu_probing": "1",
        # Established flows of many guests leave the conntrack table after a day, not five.
        "net.netfilter.nf_conntrack_tcp_timeout_established": "86400",
    }
    # Host-wide keys (vm.*, kernel.*, and net.* keys the kernel keeps per host): set live
    # and persisted where the profile does not waive "host-kernel"; where it does (a server
    # sharing its host's kernel) they are written to the team's file commented out, so no
    # boot of that server applies them to the shared kernel, and validated.
    host_sysctls: dict[str, str] = {
        "net.core.rmem_max": "33554432",
        "net.core.wmem_max": "33554432",
        "net.netfilter.nf_conntrack_max": "1048576",
        "vm.swappiness": "10",
        # Huge pages for guest memory, allocated on demand (up to 4 GiB of 2 MiB pages)
        # rather than reserved at boot: nothing is taken from a host that runs no such guest.
        "vm.nr_overcommit_hugepages": "2048",
        # Many guests map many regions.
        "vm.max_map_count": "262144",
    }
    benchmarks: Benchmarks = Benchmarks()
    # How much lower (in percent) an "after" median may be than its "before" one, per figure
    # (every one of FIGURES). Defaults for a quiet dedicated host; the scratch config states
    # its own, measured on a shared 2-core machine.
    tolerance_percent: dict[str, float] = {name: 10.0 for name in FIGURES}

    @field_validator("namespaced_sysctls", "host_sysctls")
    @classmethod
    def _entries(cls, values: dict[str, str], info: Any) -> dict[str, str]:
        field = f"golf2.{info.field_name}"
        bad = [key for key in values if not _KEY.fullmatch(key)]
        if bad:
            raise ValueError(
                f"{field}: {', '.join(map(repr, bad))} are not sysctl keys "
                "(write them like net.core.somaxconn)"
            )
        odd = [key for key, value in values.items() if not _VALUE.fullmatch(str(value))]
        if odd:
            raise ValueError(
                f"{field}: the values of {', '.join(odd)} are not sysctl values (numbers or words "
                'separated by single spaces, like "4096 131072 33554432")'
            )
        return values

    @field_validator("namespaced_sysctls")
    @classmethod
    def _namespaced(cls, values: dict[str, str]) -> dict[str, str]:
        outside = [key for key in values if not key.startswith("net.")]
        if outside:
            raise ValueError(
                f"golf2.namespaced_sysctls: {', '.join(outside)} are not per-network-namespace keys "
                "(only net.* can be): move them to golf2.host_sysctls"
            )
        return values

    @field_validator("tolerance_percent")
    @classmethod
    def _tolerances(cls, values: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(values) - set(FIGURES))
        missing = [name for name in FIGURES if name not in values]
        problems = []
        if unknown:
            problems.append(f"{', '.join(unknown)} are no figures (the figures: {', '.join(FIGURES)})")
        if missing:
            problems.append(f"no tolerance for {', '.join(missing)}: add {missing[0]} = 10.0 (percent)")
        problems += [
            f"{name} = {value:g} is outside 0..90 (percent)"
            for name, value in values.items()
            if not 0 <= value <= 90
        ]
        if problems:
            raise ValueError("golf2.tolerance_percent: " + "; ".join(problems))
        return values

    @model_validator(mode="after")
    def _distinct(self) -> Golf2Settings:
        both = sorted(set(self.namespaced_sysctls) & set(self.host_sysctls))
        if both:
            raise ValueError(
                f"golf2: {', '.join(both)} are in both namespaced_sysctls and host_sysctls; keep each in one"
            )
        return self

    def sysctls(self) -> dict[str, str]:
        """Every key of the profile (namespaced and host-wide)."""
        return {**self.namespaced_sysctls, **self.host_sysctls}

    def problems_with(self, config: Any) -> list[str]:
        problems = []
        # A profile that keeps a host to namespaced sysctls must waive the check that proves
        # the host-wide ones live, or that check fails on every such host.
        for name, profile in config.profiles.items():
            if profile.namespaced_sysctls_only and Waiver.HOST_KERNEL not in profile.waivers:
                problems.append(
                    f"profiles.{name}: namespaced_sysctls_only keeps golf2.host_sysctls off the host's "
                    f'kernel, so it must waive "{Waiver.HOST_KERNEL}": add it to its waivers'
                )
        # Two teams' files setting one key: the later file wins at boot and the other team's
        # check fails. Each key has one owner.
        shared = sorted(set(config.alpha.sysctls) & set(self.sysctls()))
        if shared:
            problems.append(
                f"golf2: {', '.join(shared)} are also set by alpha.sysctls; remove them from one of the two"
            )
        return problems
