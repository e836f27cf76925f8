"""The scratch servers' image: Debian (debootstrap minbase), systemd as PID 1, key-only root
SSH, an empty machine-id and host keys generated at first boot.

Built once and shared by every scratch server. The recipe (debootstrap arguments, the
Containerfile and the files it copies) is hashed into the image label `io.hvsuite.recipe`;
the image is rebuilt only when that hash changes.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transport import local_state as cache
from transport.podman import (
    RECIPE_LABEL,
    ROLE_LABEL,
    SUITE_LABEL,
    SUITE_LABEL_VALUE,
    PodmanError,
    inspect,
    podman,
)

# Bump when the build procedure changes in a way the hashed text below does not show.
# 2: servers boot through hvs-init (podman's host-wide cgroup bind undone); every server built
#    before it must be recreated (see targets.scratch.RUN_FLAGS_REVISION).
RECIPE_REVISION = "2"

# Exactly what a systemd server reachable over SSH needs; python3 for testinfra's modules.
INCLUDES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "iproute2",
    "python3",
    "sudo",
    "ca-certificates",
)

# Files copied into the image, path -> content.
FILES: dict[str, str] = {
    # The servers' entrypoint, so that losing one server does not break the others (podman
    # issue #17727). Chosen over running without podman's systemd mode (`--systemd=false` plus
    # its tmpfs mounts and stop signal by hand) because it keeps every podman flag and
    # what systemd mode sets up (machine-id = container id, tmpfs mounts, stop signal, no host
    # ttys) exactly as the phases were verified with, and it does nothing where podman adds no
    # such bind (cgroup v2, a fixed podman). A newer podman that refuses `--systemd=always` with
    # `--cgroupns=private` on cgroup v1 fails loudly at create; `--systemd=false` is the way out then.
    "usr/local/sbin/hvs-init": """#!/bin/sh
# podman 4.3 in systemd mode on cgroup v1 bind-mounts the host's whole name=systemd hierarchy
# over the container's private one (mountinfo root "/../.."), even with --cgroupns=private.
# systemd would take the host's root for its own and, when it shuts down, delete every empty
# cgroup directory there: the other containers' libpod-<id> dirs (`podman exec` into them then
# fails). Lazily unmount that bind so runc's private mount (root "/") shows, then run systemd.
set -u
mnt=/sys/fs/cgroup/systemd
i=0
# The last mountinfo line for a mount point is the mount on top.
while [ "$i" -lt 4 ] &&
    awk -v m="$mnt" '$5 == m { root = $4 } END { exit !(root != "" && root != "/") }' /proc/self/mountinfo
do
    umount -l "$mnt" || break
    i=$((i + 1))
done
exec /sbin/init "$@"
""",
    "usr/local/sbin/hvs-plain-etc": """#!/bin/sh
# podman bind-mounts these three files: editing them in place fails with EBUSY. Replace
# each mount with a plain file holding the same content, once, early at boot.
set -eu
for f in /etc/hosts /etc/hostname /etc/resolv.conf; do
    if awk -v f="$f" '$5 == f { found = 1 } END { exit !found }' /proc/self/mountinfo; then
        content=$(cat "$f")
        umount "$f"
        rm -f "$f"
        printf '%s\\n' "$content" > "$f"
        chmod 0644 "$f"
    fi
done
""",
    "etc/systemd/system/hvs-plain-etc.service": """[Unit]
Description=Turn podman's bind-mounted /etc/hosts, /etc/hostname, /etc/resolv.conf into plain files
DefaultDependencies=no
ConditionVirtualization=container
After=systemd-remount-fs.service
Before=sysinit.target network-pre.target systemd-hostnamed.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/hvs-plain-etc

[Install]
WantedBy=sysinit.target
""",
    "etc/systemd/system/hvs-ssh-hostkeys.service": """[Unit]
Description=Generate this server's own SSH host keys at first boot
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
""",
    "etc/ssh/sshd_config.d/10-hvsuite-scratch.conf": """# Scratch server: root logs in with a key only.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
""",
    # Recommends pull in units that fail without kernel modules (nvme-cli) and leave systemd
    # "degraded" in a container.
    "etc/apt/apt.conf.d/90hvsuite-no-recommends": 'APT::Install-Recommends "false";\n'
    'APT::Install-Suggests "false";\n',
}

CONTAINERFILE = """FROM {base}
COPY rootfs/ /
RUN set -eu; \\
    chmod 0755 /usr/local/sbin/hvs-plain-etc /usr/local/sbin/hvs-init; \\
    : > /etc/machine-id; \\
    rm -f /var/lib/dbus/machine-id; ln -s /etc/machine-id /var/lib/dbus/machine-id; \\
    rm -f /etc/ssh/ssh_host_*; \\
    systemctl enable hvs-plain-etc.service hvs-ssh-hostkeys.service ssh.service; \\
    systemctl mask systemd-firstboot.service getty.target console-getty.service; \\
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
STOPSIGNAL SIGRTMIN+3
CMD ["/usr/local/sbin/hvs-init"]
"""


@dataclass(frozen=True)
class Recipe:
    image: str
    suite: str
    mirror: str

    def debootstrap_args(self, rootfs: Path) -> list[str]:
        return [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(INCLUDES)}",
            self.suite,
            str(rootfs),
            self.mirror,
        ]

    @property
    def rootfs_hash(self) -> str:
        text = "\0".join([RECIPE_REVISION, *self.debootstrap_args(Path("ROOTFS"))])
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def base_image(self) -> str:
        return f"localhost/hvsuite-rootfs:{self.suite}-{self.rootfs_hash[:12]}"

    @property
    def hash(self) -> str:
        digest = hashlib.sha256()
        for part in (self.rootfs_hash, CONTAINERFILE, *(f"{k}\0{v}" for k, v in sorted(FILES.items()))):
            digest.update(part.encode() + b"\0")
        return digest.hexdigest()


@dataclass(frozen=True)
class BuildReport:
    image: str
    built: bool
    seconds: float
    # The id of the image carrying this recipe: servers are created from it, not from the tag,
    # which another run building another recipe may move meanwhile.
    image_id: str = ""


def current_recipe(image: str) -> str | None:
    data = inspect("image", image)
    return None if data is None else _recipe_label(data)


def _recipe_label(data: dict[str, Any]) -> str | None:
    labels = (data.get("Config") or {}).get("Labels") or data.get("Labels") or {}
    return labels.get(RECIPE_LABEL)


def ensure_image(recipe: Recipe, *, rebuild: bool = False, timeout: float = 1200.0) -> BuildReport:
    """Build the image unless one with this recipe's hash exists. Safe across processes."""
    started = time.monotonic()
    with cache.lock("image", timeout=timeout):
        data = inspect("image", recipe.image)
        if not rebuild and data is not None and _recipe_label(data) == recipe.hash:
            return BuildReport(recipe.image, False, time.monotonic() - started, str(data.get("Id", "")))
        if rebuild or inspect("image", recipe.base_image) is None:
            _build_rootfs(recipe)
        _build_image(recipe)
        # The image this build replaced is left untagged: remove it (only the suite's own,
        # and never one a container still uses).
        podman(
            "image", "prune", "--force",
            "--filter", f"label={SUITE_LABEL}={SUITE_LABEL_VALUE}", "--filter", f"label={ROLE_LABEL}=image",
            timeout=120,
        )  # fmt: skip
        data = inspect("image", recipe.image) or {}
    return BuildReport(recipe.image, True, time.monotonic() - started, str(data.get("Id", "")))


def _build_rootfs(recipe: Recipe) -> None:
    if shutil.which("debootstrap") is None:
        raise PodmanError(["debootstrap"], 127, "debootstrap is not installed; run scripts/install-host-deps")
    work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=cache.cache_dir()))
    try:
        rootfs = work / "rootfs"
        proc = subprocess.run(
            recipe.debootstrap_args(rootfs), capture_output=True, text=True, timeout=900, check=False
        )
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise PodmanError(recipe.debootstrap_args(rootfs), proc.returncode, tail)
        tarball = work / "rootfs.tar"
        subprocess.run(
            ["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(tarball), "."],
            check=True,
            timeout=300,
        )
        podman(
            "import",
            "--change",
            'CMD ["/sbin/init"]',
            "--change",
            f"LABEL {SUITE_LABEL}={SUITE_LABEL_VALUE} {ROLE_LABEL}=rootfs",
            str(tarball),
            recipe.base_image,
            timeout=300,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build_image(recipe: Recipe) -> None:
    with tempfile.TemporaryDirectory(prefix="build-", dir=cache.cache_dir()) as tmp:
        context = Path(tmp)
        for rel, content in FILES.items():
            path = context / "rootfs" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        (context / "Containerfile").write_text(CONTAINERFILE.format(base=recipe.base_image))
        podman(
            "build",
            # crun refuses this machine's hybrid cgroups.
            "--runtime",
            "runc",
            "--network",
            "none",
            "--label",
            f"{SUITE_LABEL}={SUITE_LABEL_VALUE}",
            "--label",
            f"{ROLE_LABEL}=image",
            "--label",
            f"{RECIPE_LABEL}={recipe.hash}",
            "-t",
            recipe.image,
            "-f",
            str(context / "Containerfile"),
            str(context),
            timeout=600,
        )
