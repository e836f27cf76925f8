"""Creates two real scratch servers (podman), logs in over SSH, and destroys them."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator

import pytest

from recipes.debian_image import Recipe
from settings.loader import load_settings
from targets import Target, scratch
from transport.podman import exists
from transport.ssh import open_client, run

# Name prefix of the servers this test creates (a developer may set their own).
PREFIX = os.environ.get("HVSUITE_TEST_PREFIX", "hvs-it")

pytestmark = pytest.mark.skipif(
    shutil.which("podman") is None or os.geteuid() != 0,
    reason="needs rootful podman: run scripts/install-host-deps as root",
)


@pytest.fixture(scope="module")
def servers() -> Iterator[list[Target]]:
    settings = load_settings().scratch
    names = [f"{PREFIX}-{uuid.uuid4().hex[:8]}-{i}" for i in (1, 2)]
    try:
        started = time.monotonic()
        fleet = scratch.create_fleet({names[0]: ("primary",), names[1]: ("probe",)}, settings)
        for target, report in fleet.values():
            print(f"{target.name}: created={report.created} ssh ready in {report.ready_seconds:.2f} s")
        print(f"both ready in {time.monotonic() - started:.2f} s")
        yield [fleet[name][0] for name in names]
    finally:
        for name in names:
            started = time.monotonic()
            scratch.destroy(name)
            print(f"{name}: destroyed in {time.monotonic() - started:.2f} s")
            assert not exists("container", name)
            assert not exists("volume", scratch.volume_name(name))


def sh(target: Target, command: str) -> tuple[int, str]:
    client = open_client(target.endpoint, timeout=10)
    try:
        code, out, err = run(client, command, timeout=120)
    finally:
        client.close()
    return code, (out + err).strip()


def test_systemd_is_running(servers: list[Target]) -> None:
    for target in servers:
        _code, state = sh(target, "systemctl is-system-running --wait")
        if state != "running":
            _code, failed = sh(target, "systemctl --failed --no-legend --plain")
            pytest.fail(f"{target.name}: systemd is {state!r}; failed units:\n{failed}")


def test_each_server_has_its_own_identity(servers: list[Target]) -> None:
    ids = [sh(t, "cat /etc/machine-id")[1] for t in servers]
    keys = [sh(t, "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub")[1] for t in servers]
    assert all(len(machine_id) == 32 for machine_id in ids), ids
    assert ids[0] != ids[1]
    assert keys[0] != keys[1]
    assert servers[0].address != servers[1].address


def test_servers_reach_each_other_by_address(servers: list[Target]) -> None:
    first, second = servers
    code, out = sh(
        first, f"python3 -c 'import socket; socket.create_connection((\"{second.address}\", 22), 5)'"
    )
    assert code == 0, out


def test_root_login_is_key_only(servers: list[Target]) -> None:
    code, out = sh(
        servers[0],
        "sshd -T | grep -E '^(permitrootlogin|passwordauthentication|kbdinteractiveauthentication) '",
    )
    assert code == 0, out
    assert sorted(out.splitlines()) == [
        "kbdinteractiveauthentication no",
        "passwordauthentication no",
        "permitrootlogin without-password",
    ]
    code, out = sh(servers[0], "stat -c '%a %U' /root/.ssh /root/.ssh/authorized_keys")
    assert out.splitlines() == ["700 root", "600 root"]


def test_podman_managed_files_are_plain_and_writable(servers: list[Target]) -> None:
    code, out = sh(
        servers[0],
        "findmnt -n /etc/hosts /etc/hostname /etc/resolv.conf; "
        "echo '# hvsuite' >> /etc/hosts && tail -1 /etc/hosts && cat /etc/hostname",
    )
    assert code == 0, out
    assert out.splitlines() == ["# hvsuite", servers[0].name]


def test_reuse_does_not_recreate(servers: list[Target]) -> None:
    settings = load_settings().scratch
    _code, before = sh(servers[0], "cat /etc/machine-id")
    target, report = scratch.create(servers[0].name, settings)
    assert not report.created and target.address == servers[0].address
    # Reused without roles asked for: the ones it was created with.
    assert target.roles == ("primary",)
    assert sh(target, "cat /etc/machine-id")[1] == before
    listed = {row.name: row for row in scratch.list_servers(settings)}
    row = listed[servers[0].name]
    assert row.state == "running" and row.current and row.roles == ("primary",)
    assert row.address == servers[0].address


def test_recipe_hash_is_in_the_image_label(servers: list[Target]) -> None:
    from recipes.debian_image import current_recipe

    settings = load_settings().scratch
    recipe = Recipe(settings.image, settings.suite, settings.mirror)
    assert current_recipe(settings.image) == recipe.hash
