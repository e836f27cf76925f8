"""Local scratch servers: rootful podman containers running systemd as PID 1 on the suite's
own podman network, reachable over SSH with the suite's key only.

A server is reused across runs (same name, running, built from the current image recipe)
unless a rebuild is asked for. Creation holds a per-server file lock, so concurrent runs and
xdist workers never create the same server twice.
"""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import resource
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from settings.model import ScratchSettings
from targets import Target, TargetError, cache, hostkeys
from targets.image import Recipe, ensure_image
from transport.hostkeys import HostKeyError
from transport.podman import (
    RECIPE_LABEL,
    ROLE_LABEL,
    SUITE_LABEL,
    SUITE_LABEL_VALUE,
    PodmanError,
    exists,
    inspect,
    labelled,
    podman,
    podman_bytes,
)
from transport.ssh import wait_for_ssh

log = logging.getLogger(__name__)

SCRATCH_ROLE = "scratch-server"
NETWORK_STATE = "network-state.json"


@dataclass(frozen=True)
class CreateReport:
    name: str
    created: bool
    image_built: bool
    image_seconds: float
    ready_seconds: float


def recipe_for(settings: ScratchSettings) -> Recipe:
    return Recipe(image=settings.image, suite=settings.suite, mirror=settings.mirror)


def volume_name(name: str) -> str:
    return f"{name}-containerd"


def ensure_network(settings: ScratchSettings) -> None:
    """Create the suite's bridge network unless it exists; refuse a same-named network on
    another subnet (it is not ours to change)."""
    data = inspect("network", settings.network)
    if data is not None:
        subnets = [s.get("subnet") for s in data.get("subnets") or []]
        if subnets and settings.subnet not in subnets:
            raise TargetError(
                f"podman network {settings.network!r} exists with subnet {', '.join(map(str, subnets))}, "
                f"not scratch.subnet {settings.subnet}; set scratch.subnet to match, choose another "
                "scratch.network, or remove that network"
            )
        return
    _record_forwarding()
    podman(
        "network",
        "create",
        "--subnet",
        settings.subnet,
        "--label",
        f"{SUITE_LABEL}={SUITE_LABEL_VALUE}",
        settings.network,
        timeout=60,
    )


def _record_forwarding() -> None:
    # The network backend turns IPv4 forwarding on; remember the value to restore it on destroy-all.
    state = cache.cache_dir() / NETWORK_STATE
    if state.exists():
        return
    try:
        with open("/proc/sys/net/ipv4/ip_forward") as handle:
            forwarding = handle.read().strip()
    except OSError:
        return
    state.write_text(json.dumps({"ip_forward": forwarding}))


def _nofile_limit() -> int:
    # The machine lacks CAP_SYS_RESOURCE: a container may not raise its hard limit above ours.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return hard if hard != resource.RLIM_INFINITY else 1048576


def _authorized_keys_tar(public_key: str) -> bytes:
    """A tar stream of /root/.ssh (0700) with authorized_keys (0600), owned by root."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        directory = tarfile.TarInfo(".ssh")
        directory.type = tarfile.DIRTYPE
        directory.mode = 0o700
        directory.mtime = int(time.time())
        archive.addfile(directory)
        data = (public_key + "\n").encode()
        keys = tarfile.TarInfo(".ssh/authorized_keys")
        keys.mode = 0o600
        keys.size = len(data)
        keys.mtime = int(time.time())
        archive.addfile(keys, io.BytesIO(data))
    return buffer.getvalue()


def _address(data: dict[str, Any], network: str) -> str:
    networks = (data.get("NetworkSettings") or {}).get("Networks") or {}
    return (networks.get(network) or {}).get("IPAddress") or ""


def _labels(data: dict[str, Any]) -> dict[str, str]:
    return (data.get("Config") or {}).get("Labels") or {}


def _is_ours(data: dict[str, Any]) -> bool:
    return _labels(data).get(SUITE_LABEL) == SUITE_LABEL_VALUE


def _target(
    name: str, address: str, roles: tuple[str, ...] = (), os_name: str = "", kernel: str = ""
) -> Target:
    key_file, _ = cache.scratch_keypair()
    trust = hostkeys.trust(name)
    return Target(
        name=name,
        address=address,
        port=22,
        user="root",
        key_file=key_file,
        roles=roles,
        kind="scratch",
        known_hosts=tuple(str(path) for path in trust.files),
        trust_fix=trust.fix,
        os=os_name,
        kernel=kernel,
    )


def create(
    name: str,
    settings: ScratchSettings,
    *,
    roles: tuple[str, ...] = (),
    rebuild: bool = False,
    ready_timeout: float = 90.0,
) -> tuple[Target, CreateReport]:
    """Return a running, SSH-ready scratch server called `name`, creating it if needed."""
    recipe = recipe_for(settings)
    build = ensure_image(recipe)
    _key_file, public_key = cache.scratch_keypair()
    with cache.lock(f"scratch-{name}", timeout=ready_timeout + 600):
        data = inspect("container", name)
        if data is not None and not _is_ours(data):
            raise TargetError(
                f"a container named {name!r} exists but was not created by this suite; "
                "choose another scratch name (--target scratch:NAME)"
            )
        current = data is not None and _labels(data).get(RECIPE_LABEL) == recipe.hash
        created = False
        if data is not None and (rebuild or not current):
            _remove(name)
            data = None
        if data is None:
            ensure_network(settings)
            _run_new(name, settings, recipe, public_key)
            created = True
        elif not (data.get("State") or {}).get("Running"):
            podman("start", name, timeout=60)
        data = inspect("container", name) or {}
        address = _address(data, settings.network)
        if not address:
            raise TargetError(
                f"scratch server {name} has no address on network {settings.network}; "
                f"see `podman inspect {name}`"
            )
        started = time.monotonic()
        # Pin the host keys read through the container runtime (trusted), then verify them
        # like any other target's: nothing on the network is trusted on first use.
        hostkeys.pin(name, address, hostkeys.read_host_keys(name, timeout=ready_timeout))
        try:
            waited, os_name, kernel = wait_for_ssh(_target(name, address).endpoint, timeout=ready_timeout)
        except HostKeyError as exc:
            raise TargetError(f"scratch server {name}: {exc}") from None
        except TimeoutError as exc:
            raise TargetError(
                f"scratch server {name} did not accept SSH within {ready_timeout:.0f} s: {exc}; "
                f"see `podman logs {name}`"
            ) from exc
        del waited
        report = CreateReport(
            name=name,
            created=created,
            image_built=build.built,
            image_seconds=build.seconds,
            ready_seconds=time.monotonic() - started,
        )
    return _target(name, address, roles, os_name, kernel), report


def _run_new(name: str, settings: ScratchSettings, recipe: Recipe, public_key: str) -> None:
    nofile = _nofile_limit()
    labels = [
        f"{SUITE_LABEL}={SUITE_LABEL_VALUE}",
        f"{ROLE_LABEL}={SCRATCH_ROLE}",
        f"{RECIPE_LABEL}={recipe.hash}",
    ]
    if not exists("volume", volume_name(name)):
        podman("volume", "create", "--label", labels[0], "--label", labels[1], volume_name(name), timeout=30)
    label_args = [arg for label in labels for arg in ("--label", label)]
    podman(
        "create",
        "--name",
        name,
        "--hostname",
        name,
        *label_args,
        "--privileged",
        "--systemd=always",
        # crun refuses hybrid cgroups; runc works.
        "--runtime",
        "runc",
        "--ulimit",
        f"nofile={nofile}:{nofile}",
        "--ulimit",
        "nproc=32768:32768",
        # kubelet needs its own cgroup namespace (cgroup v1 paths are not namespaced).
        "--cgroupns=private",
        "--network",
        settings.network,
        # containerd's overlayfs snapshotter needs a real filesystem, not the container's overlay.
        "--volume",
        f"{volume_name(name)}:/var/lib/containerd",
        recipe.image,
        timeout=60,
    )
    try:
        podman_bytes("cp", "-", f"{name}:/root", stdin=_authorized_keys_tar(public_key), timeout=30)
        podman("start", name, timeout=60)
    except PodmanError:
        _remove(name)
        raise


def _remove(name: str) -> None:
    podman("rm", "--force", "--time", "5", name, check=False, timeout=60)
    podman("volume", "rm", "--force", volume_name(name), check=False, timeout=30)


def destroy(name: str) -> bool:
    """Remove one scratch server and its volume; False when it did not exist. Refuses a
    container the suite did not create."""
    data = inspect("container", name)
    if data is None:
        podman("volume", "rm", "--force", volume_name(name), check=False, timeout=30)
        return False
    if not _is_ours(data):
        raise TargetError(
            f"container {name!r} was not created by this suite (no {SUITE_LABEL} label); not removing it"
        )
    with cache.lock(f"scratch-{name}", timeout=120):
        _remove(name)
        hostkeys.unpin(name)
    return True


@dataclass(frozen=True)
class ServerInfo:
    name: str
    state: str
    address: str
    current: bool
    created: str


def list_servers(settings: ScratchSettings) -> list[ServerInfo]:
    recipe = recipe_for(settings)
    rows = []
    for entry in labelled("container", role=SCRATCH_ROLE):
        name = (entry.get("Names") or ["?"])[0]
        data = inspect("container", name) or {}
        rows.append(
            ServerInfo(
                name=name,
                state=entry.get("State", "?"),
                address=_address(data, settings.network),
                current=_labels(data).get(RECIPE_LABEL) == recipe.hash,
                created=str(entry.get("CreatedAt", "")),
            )
        )
    return sorted(rows, key=lambda row: row.name)


def destroy_all(settings: ScratchSettings) -> list[str]:
    """Remove every container and volume carrying the suite's label, then the suite's network
    (only if the suite created it) and what the network backend left behind."""
    removed = []
    for entry in labelled("container"):
        name = (entry.get("Names") or [""])[0]
        if name:
            _remove(name)
            hostkeys.unpin(name)
            removed.append(name)
    for entry in labelled("volume"):
        podman("volume", "rm", "--force", entry.get("Name", ""), check=False, timeout=30)
    data = inspect("network", settings.network)
    if data is not None and (data.get("labels") or {}).get(SUITE_LABEL) == SUITE_LABEL_VALUE:
        bridge = data.get("network_interface") or ""
        podman("network", "rm", "--force", settings.network, timeout=60)
        _clean_network_leftovers(settings.network, settings.subnet, bridge)
    return removed


def _clean_network_leftovers(network_name: str, subnet: str, bridge: str) -> None:
    """Remove the bridge and CNI firewall rules naming our subnet if the backend left them, and
    restore IPv4 forwarding when the suite turned it on and no container needs it any more."""
    if bridge:
        subprocess.run(["ip", "link", "delete", bridge], capture_output=True, check=False, timeout=10)
    # CNI's host-local IPAM keeps its reservations per network name.
    shutil.rmtree(Path("/var/lib/cni/networks") / network_name, ignore_errors=True)
    network = ipaddress.ip_network(subnet)
    for table in ("filter", "nat"):
        try:
            proc = subprocess.run(
                ["iptables", "-t", table, "-S"], capture_output=True, text=True, check=False, timeout=10
            )
        except FileNotFoundError:
            return
        for rule in proc.stdout.splitlines():
            if not rule.startswith("-A ") or not _mentions(rule, network):
                continue
            args = ["iptables", "-t", table, "-D", *rule[3:].split()]
            # Comments hold quotes the shell-like split cannot round-trip; skip such rules.
            if '"' in rule:
                continue
            subprocess.run(args, capture_output=True, check=False, timeout=10)
    state = cache.cache_dir() / NETWORK_STATE
    if state.exists():
        original = json.loads(state.read_text()).get("ip_forward")
        others_running = podman("ps", "-q", check=False, timeout=30).stdout.strip()
        if original == "0" and not others_running:
            with open("/proc/sys/net/ipv4/ip_forward", "w") as handle:
                handle.write("0\n")
        state.unlink()


def _mentions(rule: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    for word in rule.split():
        try:
            if ipaddress.ip_network(word, strict=False).subnet_of(network):  # type: ignore[arg-type]
                return True
        except (ValueError, TypeError):
            continue
    return False
