import re
import subprocess
from pathlib import Path

import pytest

from recipes import debian_image as image
from recipes.debian_image import Recipe


def test_debootstrap_follows_the_measured_recipe() -> None:
    args = Recipe("img", "bookworm", "http://deb.debian.org/debian").debootstrap_args(Path("/r"))
    assert args[:2] == ["debootstrap", "--variant=minbase"]
    includes = args[2].removeprefix("--include=").split(",")
    assert set(includes) >= {
        "systemd",
        "systemd-sysv",
        "dbus",
        "openssh-server",
        "python3",
        "ca-certificates",
    }
    assert args[3:] == ["bookworm", "/r", "http://deb.debian.org/debian"]


def test_hash_is_stable_and_follows_the_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = Recipe("img", "bookworm", "http://deb.debian.org/debian")
    assert recipe.hash == Recipe("other-tag", "bookworm", "http://deb.debian.org/debian").hash
    assert recipe.hash != Recipe("img", "trixie", "http://deb.debian.org/debian").hash
    before = recipe.hash
    monkeypatch.setitem(image.FILES, "etc/extra", "changed\n")
    assert recipe.hash != before
    monkeypatch.setattr(image, "CONTAINERFILE", image.CONTAINERFILE + "# changed\n")
    assert recipe.hash != before


def test_image_clears_identity_and_generates_host_keys_at_boot() -> None:
    assert ": > /etc/machine-id" in image.CONTAINERFILE
    assert "rm -f /etc/ssh/ssh_host_*" in image.CONTAINERFILE
    unit = image.FILES["etc/systemd/system/hvs-ssh-hostkeys.service"]
    assert "ssh-keygen -A" in unit and "Before=ssh.service" in unit
    assert 'APT::Install-Recommends "false"' in image.FILES["etc/apt/apt.conf.d/90hvsuite-no-recommends"]


def test_servers_boot_through_hvs_init() -> None:
    assert 'CMD ["/usr/local/sbin/hvs-init"]' in image.CONTAINERFILE
    assert "chmod 0755 /usr/local/sbin/hvs-plain-etc /usr/local/sbin/hvs-init" in image.CONTAINERFILE
    script = image.FILES["usr/local/sbin/hvs-init"]
    assert script.startswith("#!/bin/sh\n")
    assert 'umount -l "$mnt"' in script
    assert script.rstrip().endswith('exec /sbin/init "$@"')


# runc's private name=systemd mount, podman's host-wide bind on top of it, and a mask below.
MOUNTINFO_PODMAN = """\
94 85 0:50 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - tmpfs tmpfs rw,mode=755
102 94 0:36 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,pids
103 94 0:37 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime - cgroup systemd rw,name=systemd
104 103 0:37 /../.. /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
53 104 0:45 /null /sys/fs/cgroup/systemd/release_agent rw,nosuid,noexec - tmpfs tmpfs rw,size=65536k
"""


@pytest.mark.parametrize(
    ("mountinfo", "unmount"),
    [
        (MOUNTINFO_PODMAN, True),
        # After the lazy unmount: runc's own mount only.
        ("".join(MOUNTINFO_PODMAN.splitlines(keepends=True)[:3]), False),
        # cgroup v2: no name=systemd hierarchy at all.
        ("30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n", False),
    ],
)
def test_hvs_init_unmounts_only_a_bind_from_outside(tmp_path: Path, mountinfo: str, unmount: bool) -> None:
    script = image.FILES["usr/local/sbin/hvs-init"]
    match = re.search(r"awk -v m=\"\$mnt\" '([^']*)' /proc/self/mountinfo", script)
    assert match, "hvs-init decides with one awk program on /proc/self/mountinfo"
    (tmp_path / "mountinfo").write_text(mountinfo)
    proc = subprocess.run(
        ["awk", "-v", "m=/sys/fs/cgroup/systemd", match.group(1), str(tmp_path / "mountinfo")], check=False
    )
    assert (proc.returncode == 0) == unmount
