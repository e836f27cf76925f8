from pathlib import Path

import pytest

from targets import image
from targets.image import Recipe


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
