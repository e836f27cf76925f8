"""Team Delta: what a host must be before kubelet runs and ``kubeadm init`` starts, read on the
host and refused with the fix named before anything of Delta's is installed.

- **containerd** meets the Kubernetes version's requirement (containerd's RELEASES.md,
  "Kubernetes support": which containerd lines and patches each Kubernetes minor is tested
  with). Bravo installs containerd from the OS archive, whose version is the host's business.
- **External etcd on the release route** (``delta.etcd = "external"``) is at least kubeadm's
  minimum (``delta.release.min_external_etcd``): the version the host's package gives, or would
  give once installed. The recipe route is not checked: it runs Debian's etcd 3.4 with
  kubeadm 1.20, whose preflight it skips (no crictl), and was proven so.
- **Swap**: kubelet refuses to start with swap on (``failSwapOn``, 1.20 and current releases).
  ``delta.swap = "off"`` turns it off now and keeps it off (swap lines of /etc/fstab commented
  out); on a host whose kernel is shared (a scratch server: the controller's), swap is not this
  host's to turn off, and one found on is refused. ``"allow"``: kubelet is configured instead
  (`steps.delta.kubeadm_config`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from apply.api import Context
from apply.facts import Fact
from apply.runner import ApplyError, Host

# containerd's RELEASES.md ("Kubernetes support") at containerd/containerd
# 301026e58c619e63d09c0ec411012e54c0124b03: per Kubernetes minor, the lowest patch of each
# containerd line it supports (a later line than the newest listed is accepted too). 1.20 (the
# recipe) from its deprecated-versions table: containerd 1.4 on, and below 2.0, which drops
# CRI v1alpha2, the only CRI version kubelet speaks before 1.23.
CONTAINERD_FOR_KUBERNETES: dict[tuple[int, int], tuple[str, ...]] = {
    (1, 20): ("1.4.0",),
    (1, 32): ("1.6.36", "1.7.24", "2.0.1", "2.1.0"),
    (1, 33): ("1.6.36", "1.7.24", "2.0.4", "2.1.0"),
    (1, 34): ("1.6.39", "1.7.28", "2.0.6", "2.1.3"),
    (1, 35): ("1.7.28", "2.1.5", "2.2.0"),
    (1, 36): ("2.2.0", "2.3.0"),
}
# An exclusive upper bound where a Kubernetes minor cannot talk to a newer containerd.
CONTAINERD_BELOW: dict[tuple[int, int], str] = {(1, 20): "2.0.0"}

FSTAB = "/etc/fstab"
# The mark a commented-out swap line of /etc/fstab carries.
FSTAB_MARK = "#hvsuite-swap-off# "

Version = tuple[int, int, int]

_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def parse_version(text: str) -> Version | None:
    """The first MAJOR.MINOR.PATCH in ``text``; a Debian epoch ("1:") is skipped."""
    match = _VERSION.search(re.sub(r"^\d+:", "", text.strip()))
    return (int(match.group(1)), int(match.group(2)), int(match.group(3))) if match else None


def _text(version: Version) -> str:
    return ".".join(map(str, version))


def containerd_supported(kubernetes: str, containerd: Version) -> bool | None:
    """Whether ``containerd`` is among the versions Kubernetes ``kubernetes`` supports;
    None when no requirement is recorded for its minor."""
    parsed = parse_version(kubernetes)
    assert parsed is not None, kubernetes
    minor = parsed[:2]
    floors = [parse_version(v) for v in CONTAINERD_FOR_KUBERNETES.get(minor, ())]
    if not floors:
        return None
    below = CONTAINERD_BELOW.get(minor)
    if below is not None and containerd >= (parse_version(below) or containerd):
        return False
    lines = {floor[:2]: floor for floor in floors if floor is not None}
    if containerd[:2] in lines:
        return containerd >= lines[containerd[:2]]
    return containerd[:2] > max(lines)


def containerd_requirement(kubernetes: str) -> str:
    parsed = parse_version(kubernetes)
    assert parsed is not None, kubernetes
    minor = parsed[:2]
    text = ", ".join(f"{v}+" for v in CONTAINERD_FOR_KUBERNETES[minor])
    below = CONTAINERD_BELOW.get(minor)
    return text + (f" and below {below}" if below else "")


@dataclass(frozen=True)
class ContainerdVersion(Fact["Version | None"]):
    """The version ``containerd --version`` reports (Debian's "1.6.20~ds1", upstream's
    "v2.2.1"), or None without containerd."""

    @property
    def command(self) -> str:
        return "if command -v containerd >/dev/null 2>&1; then containerd --version; fi"

    def parse(self, output: str) -> Version | None:
        # "containerd <module path or distribution> <version> <revision>"
        words = output.split()
        return parse_version(words[2]) if len(words) >= 3 else None


@dataclass(frozen=True)
class PackageVersions(Fact["tuple[str | None, str | None]"]):
    """A package's installed and candidate versions as apt sees them (None: none)."""

    package: str

    @property
    def command(self) -> str:
        return f"apt-cache policy -- {self.package} 2>/dev/null || true"

    def parse(self, output: str) -> tuple[str | None, str | None]:
        found: dict[str, str | None] = {"Installed": None, "Candidate": None}
        for line in output.splitlines():
            key, _, value = line.strip().partition(":")
            if key in found and found[key] is None:
                value = value.strip()
                found[key] = None if value in ("", "(none)") else value
        return found["Installed"], found["Candidate"]


@dataclass(frozen=True)
class ActiveSwaps(Fact[list[str]]):
    """The swap areas in use (/proc/swaps; a shared kernel shows its own)."""

    @property
    def command(self) -> str:
        return "cat /proc/swaps 2>/dev/null || true"

    def parse(self, output: str) -> list[str]:
        lines = output.splitlines()
        return [line.split()[0] for line in lines[1:] if line.strip()]


@dataclass(frozen=True)
class FstabSwaps(Fact[list[str]]):
    """The swap entries /etc/fstab would activate at boot (not commented out)."""

    @property
    def command(self) -> str:
        return f"awk '$1 !~ /^#/ && $3 == \"swap\" {{print $1}}' {FSTAB} 2>/dev/null || true"

    def parse(self, output: str) -> list[str]:
        return [line.strip() for line in output.splitlines() if line.strip()]


def check_containerd(host: Host, kubernetes: str) -> None:
    """containerd on the host is one ``kubernetes`` supports; ApplyError naming the fix."""
    found = host.fact(ContainerdVersion())
    if found is None:
        raise ApplyError(
            f"[{host.name}] no containerd on the host: Team Bravo installs it; run Bravo before Delta"
        )
    supported = containerd_supported(kubernetes, found)
    if supported is None:
        known = ", ".join(f"{a}.{b}" for a, b in sorted(CONTAINERD_FOR_KUBERNETES))
        raise ApplyError(
            f"[{host.name}] no containerd requirement is recorded for Kubernetes {kubernetes} (known: "
            f"{known}). Fix: add its row of containerd's RELEASES.md to "
            "steps.delta.preflight.CONTAINERD_FOR_KUBERNETES"
        )
    if not supported:
        raise ApplyError(
            f"[{host.name}] containerd {_text(found)} does not meet Kubernetes {kubernetes}'s requirement "
            f"(containerd {containerd_requirement(kubernetes)}, containerd's RELEASES.md). Fix: install a "
            "containerd that does (bravo.packages from an archive that has one), or pin a "
            "delta.release whose requirement it meets (docs/production.md)"
        )


def check_external_etcd(host: Host, package: str, minimum: str, kubernetes: str) -> None:
    """The etcd ``package`` gives (installed, else apt's candidate) is at least ``minimum``."""
    installed, candidate = host.fact(PackageVersions(package))
    version = installed or candidate
    if version is None:
        raise ApplyError(
            f'[{host.name}] delta.etcd = "external", and apt has no {package} for this host. '
            'Fix: use delta.etcd = "stacked" (kubeadm\'s etcd image), or make the package available'
        )
    parsed = parse_version(version)
    wanted = parse_version(minimum)
    if parsed is None or wanted is None or parsed < wanted:
        raise ApplyError(
            f"[{host.name}] {package} {version} is below {minimum}, the oldest external etcd kubeadm "
            f'{kubernetes} accepts (delta.release.min_external_etcd). Fix: use delta.etcd = "stacked" '
            f"(kubeadm's own etcd image), or give the host an etcd of {minimum} or later"
        )


def swap_off(host: Host, *, shared_kernel: bool) -> None:
    """No swap in use, and none activated at boot. On a shared kernel swap is refused, never
    turned off (it would be turned off for every machine on that kernel)."""
    active = host.fact(ActiveSwaps())
    if active and shared_kernel:
        raise ApplyError(
            f"[{host.name}] swap is on ({', '.join(active)}) in a kernel this host shares with the "
            "machine running it, and kubelet refuses to start with swap on. Fix: turn swap off on that "
            'machine, or set delta.swap = "allow" (kubelet runs with swap on, pods get none)'
        )
    host.execute("swap off (kubelet refuses to start with swap on)", ["swapoff -a"] if active else [])
    if shared_kernel:
        return
    entries = host.fact(FstabSwaps())
    # Comments out exactly the lines FstabSwaps reports, so the next read finds none.
    comment = (
        f"awk -v mark='{FSTAB_MARK}' '$1 !~ /^#/ && $3 == \"swap\" {{$0 = mark $0}} {{print}}' {FSTAB} "
        f"> {FSTAB}.hvsuite && cat {FSTAB}.hvsuite > {FSTAB} && rm -f {FSTAB}.hvsuite"
    )
    host.execute(
        f"swap kept off at boot ({FSTAB}: {', '.join(entries) or 'none'})",
        [comment, "systemctl daemon-reload"] if entries else [],
        lock="systemd",
    )


def node(ctx: Context, *, source: str, version: str) -> None:
    """Delta's checks of the host and its swap, before anything of Delta's is installed."""
    host, delta = ctx.host, ctx.settings.delta
    if host.mode == "verify":
        return
    check_containerd(host, version)
    if source == "release" and delta.resolved_etcd(ctx.profile) == "external":
        check_external_etcd(host, delta.etcd_packages[0], delta.release.min_external_etcd, version)
    if delta.swap == "off":
        swap_off(host, shared_kernel=ctx.profile.namespaced_sysctls_only)
