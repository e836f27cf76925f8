"""Local scratch servers: rootful podman containers running systemd as PID 1 on the suite's
own podman network, reachable over SSH with the suite's key only.

A server is reused across runs (same name, running, built from the current image recipe with
the current run flags) unless a rebuild is asked for. Creation holds a per-server file lock,
so concurrent runs and xdist workers never create the same server twice; :func:`create_fleet`
creates several at once.

Each server keeps one address for its life (``--ip``, recorded in a label), across podman
stop/start/restart, and gets it back when it is recreated under the same name while the
address is free. The roles it was created for are recorded in a label too.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import logging
import resource
import shutil
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipes.debian_image import BuildReport, Recipe, ensure_image
from settings.model import ScratchSettings
from targets import Target, TargetError, hostkeys
from transport import local_state as cache
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
# name -> the address it last had, so that a server recreated under its name gets it back;
# the most recent names only (their addresses are kept back from other new servers).
ADDRESS_BOOK = "scratch-addresses.json"
ADDRESS_BOOK_SIZE = 64
# A new server whose address another run took between allocation and start gets another.
ADDRESS_ATTEMPTS = 3

# The inventory roles a server was created for, comma-separated.
ROLES_LABEL = "io.hvsuite.roles"
# The address it was given with --ip (podman shows no address while it is stopped).
ADDRESS_LABEL = "io.hvsuite.address"
# Which revision of the `podman create` flags (with the image's entrypoint) it was made with.
RUN_FLAGS_LABEL = "io.hvsuite.run-flags"
# Bump when the way a server is run changes so that existing servers must be recreated.
# 2: the hvs-init entrypoint, --ip and --mac-address. A server without this label (revision 1)
#    runs its systemd on the host's whole name=systemd cgroup tree and, when it shuts down,
#    deletes the other servers' cgroup dirs: it is removed before any server is created
#    (remove_old_flag_servers).
RUN_FLAGS_REVISION = "2"


@dataclass(frozen=True)
class CreateReport:
    name: str
    created: bool
    image_built: bool
    image_seconds: float
    # From taking the server's lock to SSH ready (podman create/start included).
    ready_seconds: float


def recipe_for(settings: ScratchSettings) -> Recipe:
    return Recipe(image=settings.image, suite=settings.suite, mirror=settings.mirror)


def volume_name(name: str) -> str:
    return f"{name}-containerd"


def ensure_network(settings: ScratchSettings) -> str | None:
    """Create the suite's bridge network unless it exists; refuse a same-named network on
    another subnet (it is not ours to change). Returns the subnet's gateway, if podman names it."""
    with cache.lock("network", timeout=120):
        data = inspect("network", settings.network)
        if data is None:
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
            data = inspect("network", settings.network) or {}
    subnets = data.get("subnets") or []
    if subnets and settings.subnet not in [s.get("subnet") for s in subnets]:
        raise TargetError(
            f"podman network {settings.network!r} exists with subnet "
            f"{', '.join(str(s.get('subnet')) for s in subnets)}, not scratch.subnet {settings.subnet}; "
            "set scratch.subnet to match, choose another scratch.network, or remove that network"
        )
    return next((s.get("gateway") for s in subnets if s.get("subnet") == settings.subnet), None)


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


# Every server's systemd, and each node's kubelet and containerd, hold inotify instances of
# root on the machine's kernel: at its default of 128 a fleet of Kubernetes nodes uses them
# up, and the next server's systemd waits forever for sshd. These are kind's documented values.
INOTIFY_MINIMUM = {"max_user_instances": 1024, "max_user_watches": 524288}
INOTIFY_STATE = "inotify-state.json"
INOTIFY_DIR = Path("/proc/sys/fs/inotify")


def _inotify_headroom() -> None:
    """Raise the machine's inotify limits to INOTIFY_MINIMUM where lower (the first raise
    records the originals, which destroy-all puts back)."""
    with cache.lock("inotify", timeout=60):
        state = cache.cache_dir() / INOTIFY_STATE
        recorded = json.loads(state.read_text()) if state.exists() else {}
        for name, minimum in INOTIFY_MINIMUM.items():
            path = INOTIFY_DIR / name
            current = int(path.read_text())
            if current >= minimum:
                continue
            try:
                path.write_text(f"{minimum}\n")
            except OSError as exc:
                raise TargetError(
                    f"fs.inotify.{name} is {current}, too few for a fleet of scratch servers, and it "
                    f"cannot be raised here ({exc}). Fix: as root, sysctl -w fs.inotify.{name}={minimum}"
                ) from exc
            recorded.setdefault(name, current)
        if recorded:
            state.write_text(json.dumps(recorded))


def _restore_inotify() -> None:
    state = cache.cache_dir() / INOTIFY_STATE
    if not state.exists():
        return
    for name, original in json.loads(state.read_text()).items():
        with contextlib.suppress(OSError):
            (INOTIFY_DIR / name).write_text(f"{original}\n")
    state.unlink()


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


def _roles_of(data: dict[str, Any]) -> tuple[str, ...]:
    return tuple(role for role in _labels(data).get(ROLES_LABEL, "").split(",") if role)


def _recorded_address(data: dict[str, Any], network: str) -> str:
    """The address the server was given (its label), else the one it has now."""
    return _labels(data).get(ADDRESS_LABEL) or _address(data, network)


def _has_current_flags(labels: Mapping[str, str]) -> bool:
    return labels.get(RUN_FLAGS_LABEL) == RUN_FLAGS_REVISION


def _is_current(data: dict[str, Any], recipe: Recipe) -> bool:
    labels = _labels(data)
    return labels.get(RECIPE_LABEL) == recipe.hash and _has_current_flags(labels)


def _check_roles(roles: Iterable[str]) -> tuple[str, ...]:
    checked = tuple(dict.fromkeys(roles))
    for role in checked:
        if not role or "," in role or role != role.strip():
            raise TargetError(f"invalid role {role!r}: a role is a non-empty word without commas or spaces")
    return checked


# --- addresses ---------------------------------------------------------------------------


def pick_address(
    subnet: str,
    *,
    gateway: str | None,
    used: Iterable[str],
    reserved: Iterable[str] = (),
    preferred: Iterable[str | None] = (),
) -> str:
    """A host address of ``subnet`` that is not the gateway and not ``used``: the first free
    one of ``preferred``, else the lowest free one not ``reserved`` (remembered for other
    names), else the lowest free one at all. TargetError when the subnet is full."""
    network = ipaddress.ip_network(subnet)
    taken = {ipaddress.ip_address(a) for a in used if a}
    taken.add(ipaddress.ip_address(gateway) if gateway else next(network.hosts()))

    def free(address: str | None) -> bool:
        if not address:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        hosts = ip in network and ip not in (network.network_address, network.broadcast_address)
        return hosts and ip not in taken

    for address in preferred:
        if free(address):
            return str(address)
    kept = {ipaddress.ip_address(a) for a in reserved if a}
    for avoid in (kept, set()):
        for ip in network.hosts():
            if ip not in avoid and free(str(ip)):
                return str(ip)
    raise TargetError(
        f"no free address left in scratch.subnet {subnet}: remove servers (`python -m targets list`) "
        "or choose a larger scratch.subnet"
    )


def _address_book() -> dict[str, str]:
    path = cache.cache_dir() / ADDRESS_BOOK
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _remember(entries: Mapping[str, str]) -> None:
    """Record name -> address; hold the ``scratch-addresses`` lock."""
    if not entries:
        return
    book = {name: address for name, address in _address_book().items() if name not in entries}
    book.update(entries)
    book = dict(list(book.items())[-ADDRESS_BOOK_SIZE:])
    path = cache.cache_dir() / ADDRESS_BOOK
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(book, indent=1) + "\n")
    tmp.replace(path)


def _network_containers(network: str) -> list[dict[str, Any]]:
    """`podman inspect` of every container attached to ``network``, running or not."""
    proc = podman("ps", "-a", "--filter", f"network={network}", "--format", "{{.ID}}", timeout=30)
    ids = proc.stdout.split()
    if not ids:
        return []
    # A container removed meanwhile makes inspect exit non-zero but still print the others.
    out = podman("container", "inspect", *ids, check=False, timeout=30).stdout
    try:
        return list(json.loads(out or "[]"))
    except ValueError:
        return []


class _AddressPool:
    """Hands out addresses on the suite's network to new servers (of one create call or one
    fleet). The containers' addresses are read once: a podman call costs CPU that parallel
    boots need. What is handed out afterwards, here or by another run sharing the cache, is in
    the address book, which is read and written under its file lock at every allocation and
    reserves each name's address."""

    def __init__(self, settings: ScratchSettings) -> None:
        self.settings = settings
        self.gateway = ensure_network(settings)
        self._lock = threading.Lock()
        self._in_use: dict[str, set[str]] | None = None
        self._handed_out: set[str] = set()
        # Addresses the config keeps for other uses (a load balancer's pool).
        self._kept_free = {str(ip) for net in settings.keep_free for ip in ipaddress.ip_network(net)}

    def _containers(self) -> dict[str, set[str]]:
        with self._lock:
            if self._in_use is None:
                network = self.settings.network
                self._in_use = {
                    str(data.get("Name", "")).lstrip("/"): {
                        a for a in (_labels(data).get(ADDRESS_LABEL), _address(data, network)) if a
                    }
                    for data in _network_containers(network)
                }
            return self._in_use

    def allocate(self, name: str, previous: str) -> str:
        """A free address for new server ``name``; the one it had before (``previous``, or
        the address book's) when that is still free."""
        containers = self._containers()
        # The server's own old container (removed before it is recreated) holds nothing.
        used = {address for other, held in containers.items() if other != name for address in held}
        with self._lock, cache.lock("scratch-addresses", timeout=120):
            book = _address_book()
            address = pick_address(
                self.settings.subnet,
                gateway=self.gateway,
                used=used | self._handed_out | self._kept_free,
                reserved=[address for other, address in book.items() if other != name],
                preferred=(previous, book.get(name)),
            )
            _remember({name: address})
            self._handed_out.add(address)
        return address

    def taken(self, address: str) -> None:
        """``address`` turned out to be in use: read the containers' addresses again."""
        with self._lock:
            self._in_use = None
            self._handed_out.add(address)


# --- creation -----------------------------------------------------------------------------


def remove_old_flag_servers() -> list[str]:
    """Remove every scratch server of this suite created with older run flags (it would delete
    the other servers' cgroup dirs when it shuts down) and log one line naming them."""
    old = []
    for entry in labelled("container", role=SCRATCH_ROLE):
        name = (entry.get("Names") or [""])[0]
        if name and not _has_current_flags(entry.get("Labels") or {}):
            old.append(name)
    if not old:
        return []
    log.warning(
        "removing %d scratch server(s) created with old run flags (their shutdown would delete the "
        "other servers' cgroup dirs): %s",
        len(old),
        ", ".join(old),
    )
    remembered = {}
    for name in old:
        data = inspect("container", name)
        if data is not None:
            remembered[name] = _address(data, _network_of(data))
        # Killed, not stopped: its systemd's clean shutdown is what deletes the others' dirs.
        _remove(name, grace=0)
        hostkeys.unpin(name)
    with cache.lock("scratch-addresses", timeout=120):
        _remember({k: v for k, v in remembered.items() if v})
    return old


def _network_of(data: dict[str, Any]) -> str:
    networks = (data.get("NetworkSettings") or {}).get("Networks") or {}
    return next(iter(networks), "")


def create(
    name: str,
    settings: ScratchSettings,
    *,
    roles: tuple[str, ...] = (),
    rebuild: bool = False,
    ready_timeout: float = 90.0,
) -> tuple[Target, CreateReport]:
    """Return a running, SSH-ready scratch server called `name` holding `roles`, creating it
    if needed."""
    roles = _check_roles(roles)
    build = ensure_image(recipe_for(settings))
    remove_old_flag_servers()
    pool = _AddressPool(settings)
    return _create(
        name, settings, roles, rebuild=rebuild, ready_timeout=ready_timeout, build=build, pool=pool
    )


def create_fleet(
    servers: Mapping[str, Sequence[str]], settings: ScratchSettings, *, rebuild: bool = False
) -> dict[str, tuple[Target, CreateReport]]:
    """Create (or reuse) every server of ``servers`` (name -> roles) in parallel, the image
    ensured once first. One TargetError names every server that failed (the others stay)."""
    wanted = {name: _check_roles(roles) for name, roles in servers.items()}
    if not wanted:
        return {}
    build = ensure_image(recipe_for(settings))
    _inotify_headroom()
    cache.scratch_keypair()
    remove_old_flag_servers()
    pool = _AddressPool(settings)
    with ThreadPoolExecutor(max_workers=len(wanted), thread_name_prefix="scratch") as threads:
        futures = {
            name: threads.submit(
                _create,
                name,
                settings,
                roles,
                rebuild=rebuild,
                ready_timeout=settings.ready_timeout,
                build=build,
                pool=pool,
            )
            for name, roles in wanted.items()
        }
    results: dict[str, tuple[Target, CreateReport]] = {}
    errors: list[str] = []
    for name, future in futures.items():
        try:
            results[name] = future.result()
        except (TargetError, PodmanError) as exc:
            errors.append(f"{name}: {exc}")
        except Exception as exc:
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    if errors:
        raise TargetError(
            f"{len(errors)} of {len(wanted)} scratch servers could not be created:\n"
            + "\n".join(f"  {error}" for error in errors)
        )
    return results


def _create(
    name: str,
    settings: ScratchSettings,
    roles: tuple[str, ...],
    *,
    rebuild: bool,
    ready_timeout: float,
    build: BuildReport,
    pool: _AddressPool,
) -> tuple[Target, CreateReport]:
    recipe = recipe_for(settings)
    _key_file, public_key = cache.scratch_keypair()
    with cache.lock(f"scratch-{name}", timeout=ready_timeout + 600):
        started = time.monotonic()
        data = inspect("container", name)
        if data is not None and not _is_ours(data):
            raise TargetError(
                f"a container named {name!r} exists but was not created by this suite; "
                "choose another scratch name (--target scratch:NAME)"
            )
        created = started_now = False
        previous = ""
        if data is not None and (rebuild or not _is_current(data, recipe)):
            previous = _recorded_address(data, settings.network)
            _remove(name)
            data = None
        if data is None:
            image = build.image_id or recipe.image
            for attempt in range(1, ADDRESS_ATTEMPTS + 1):
                address = pool.allocate(name, previous)
                try:
                    _run_new(name, settings, image, recipe, public_key, address, roles)
                    break
                except PodmanError as exc:
                    # Another run (another cache, so another address book) took it meanwhile.
                    if "is not available" not in exc.stderr or attempt == ADDRESS_ATTEMPTS:
                        raise
                    log.info("scratch server %s: %s was taken meanwhile; trying another", name, address)
                    pool.taken(address)
                    previous = ""
            created = True
        else:
            if roles and roles != _roles_of(data):
                log.warning(
                    "scratch server %s was created with roles %s; reused for %s (its label keeps the "
                    "old ones: recreate it to change them)",
                    name,
                    ",".join(_roles_of(data)) or "-",
                    ",".join(roles),
                )
            roles = roles or _roles_of(data)
            if not (data.get("State") or {}).get("Running"):
                _start(name, _recorded_address(data, settings.network), settings.network)
                started_now = True
        data = inspect("container", name) or {}
        address = _address(data, settings.network)
        if not address:
            raise TargetError(
                f"scratch server {name} has no address on network {settings.network}; "
                f"see `podman inspect {name}`"
            )
        # Pin the host keys read through the container runtime (trusted), then verify them
        # like any other target's: nothing on the network is trusted on first use. Each
        # `podman exec` costs a few hundred ms of CPU, so a booting server is first waited
        # for by TCP connects to sshd (nearly free): polling by exec slowed parallel boots
        # down 3-5 times.
        if created or started_now:
            _wait_for_port(name, address, 22, timeout=ready_timeout)
        hostkeys.pin(name, address, hostkeys.read_host_keys(name, timeout=ready_timeout))
        try:
            _waited, os_name, kernel = wait_for_ssh(_target(name, address).endpoint, timeout=ready_timeout)
        except HostKeyError as exc:
            raise TargetError(f"scratch server {name}: {exc}") from None
        except TimeoutError as exc:
            raise TargetError(
                f"scratch server {name} did not accept SSH within {ready_timeout:.0f} s: {exc}; "
                f"see `podman logs {name}`"
            ) from exc
        report = CreateReport(
            name=name,
            created=created,
            image_built=build.built,
            image_seconds=build.seconds,
            ready_seconds=time.monotonic() - started,
        )
    return _target(name, address, roles, os_name, kernel), report


def _start(name: str, address: str, network: str) -> None:
    try:
        podman("start", name, timeout=60)
    except PodmanError as exc:
        if "is not available" not in exc.stderr:
            raise
        holders = [
            str(data.get("Name", "")).lstrip("/")
            for data in _network_containers(network)
            if _address(data, network) == address
        ]
        raise TargetError(
            f"scratch server {name} cannot start: its address {address} is taken"
            f"{' by ' + ', '.join(holders) if holders else ''}. Fix: remove that container, or "
            f"recreate {name} (--rebuild) to give it another address"
        ) from exc


def mac_address(address: str) -> str:
    """A locally administered unicast MAC made from the address' last three bytes (02:68:76
    for "hv"): the same address always gets the same MAC, distinct within a /8 or smaller."""
    last = ipaddress.ip_address(address).packed[-3:]
    return "02:68:76:" + ":".join(f"{byte:02x}" for byte in last)


def _wait_for_port(name: str, address: str, port: int, *, timeout: float) -> None:
    """Until something accepts TCP connections on address:port (nothing is read from it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=1.0):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise TargetError(
                    f"scratch server {name}: nothing listens on {address}:{port} after {timeout:.0f} s "
                    f"({exc}); see `podman logs {name}`"
                ) from None
        time.sleep(0.05)


def _run_new(
    name: str,
    settings: ScratchSettings,
    image: str,
    recipe: Recipe,
    public_key: str,
    address: str,
    roles: tuple[str, ...],
) -> None:
    nofile = _nofile_limit()
    labels = [
        f"{SUITE_LABEL}={SUITE_LABEL_VALUE}",
        f"{ROLE_LABEL}={SCRATCH_ROLE}",
        f"{RECIPE_LABEL}={recipe.hash}",
        f"{RUN_FLAGS_LABEL}={RUN_FLAGS_REVISION}",
        f"{ADDRESS_LABEL}={address}",
        f"{ROLES_LABEL}={','.join(roles)}",
    ]
    volume = podman(
        "volume", "create", "--label", labels[0], "--label", labels[1], volume_name(name),
        check=False, timeout=30,
    )  # fmt: skip
    if volume.returncode != 0 and not exists("volume", volume_name(name)):
        raise PodmanError(volume.args, volume.returncode, volume.stderr)
    label_args = [arg for label in labels for arg in ("--label", label)]
    podman(
        "create",
        "--name",
        name,
        "--hostname",
        name,
        *label_args,
        "--privileged",
        # The image's entrypoint (hvs-init) keeps systemd in the server's own cgroup tree.
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
        # Without a fixed address the network hands out a new one at every start.
        "--ip",
        address,
        # A new MAC behind the same address leaves the host's and the other servers' ARP
        # entries stale after a restart: SSH to it then stalled for about 30 s.
        "--mac-address",
        mac_address(address),
        # containerd's overlayfs snapshotter needs a real filesystem, not the container's overlay.
        "--volume",
        f"{volume_name(name)}:/var/lib/containerd",
        image,
        timeout=60,
    )
    try:
        podman_bytes("cp", "-", f"{name}:/root", stdin=_authorized_keys_tar(public_key), timeout=30)
        podman("start", name, timeout=60)
    except PodmanError:
        _remove(name)
        raise


def _remove(name: str, *, grace: int = 5) -> None:
    podman("rm", "--force", "--time", str(grace), name, check=False, timeout=60)
    podman("volume", "rm", "--force", volume_name(name), check=False, timeout=30)


def destroy(name: str) -> bool:
    """Remove one scratch server and its volume; False when it did not exist. Refuses a
    container the suite did not create. Its address stays booked for its name."""
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
    roles: tuple[str, ...] = ()


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
                address=_address(data, settings.network) or _labels(data).get(ADDRESS_LABEL, ""),
                current=_is_current(data, recipe),
                created=str(entry.get("CreatedAt", "")),
                roles=_roles_of(data),
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
    if not podman("ps", "-q", check=False, timeout=30).stdout.strip():
        _restore_inotify()


def _mentions(rule: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    for word in rule.split():
        try:
            if ipaddress.ip_network(word, strict=False).subnet_of(network):  # type: ignore[arg-type]
                return True
        except (ValueError, TypeError):
            continue
    return False


# -- power, for failure drills -------------------------------------------------------------


def stop(name: str, *, grace: int = 10) -> None:
    """The server shut down as a machine is: its init is told to stop, given ``grace`` s."""
    podman("stop", "-t", str(grace), name, timeout=grace + 60)


def kill(name: str) -> None:
    """The server dead at once (SIGKILL to every process): a power cut."""
    podman("kill", "-s", "KILL", name, timeout=60)


def start(name: str) -> None:
    """A stopped server started again, at the address it keeps for its life."""
    data = inspect("container", name)
    if data is None:
        raise TargetError(f"scratch server {name} does not exist")
    network = _network_of(data)
    _start(name, _recorded_address(data, network), network)
