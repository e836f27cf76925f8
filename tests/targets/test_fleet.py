"""Scratch fleets: addresses, roles, parallel creation, and a real three-server fleet that
survives losing members (podman stop/start/kill/restart and destroy)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from recipes.debian_image import ensure_image
from settings.loader import load_settings
from settings.model import ScratchSettings
from targets import Target, TargetError, scratch
from targets import __main__ as cli
from transport.podman import RECIPE_LABEL, ROLE_LABEL, SUITE_LABEL, SUITE_LABEL_VALUE, exists, inspect, podman
from transport.ssh import open_client, run, wait_for_ssh

# Name prefix of the servers this test creates (a developer may set their own).
PREFIX = os.environ.get("HVSUITE_TEST_PREFIX", "hvs-it")

needs_podman = pytest.mark.skipif(
    shutil.which("podman") is None or os.geteuid() != 0,
    reason="needs rootful podman: run scripts/install-host-deps as root",
)


# --- addresses -----------------------------------------------------------------------------


def test_pick_address_skips_gateway_and_used() -> None:
    assert scratch.pick_address("10.9.0.0/24", gateway="10.9.0.1", used=[]) == "10.9.0.2"
    used = ["10.9.0.2", "10.9.0.3", ""]
    assert scratch.pick_address("10.9.0.0/24", gateway="10.9.0.1", used=used) == "10.9.0.4"
    # Without a gateway named, the first host address is taken to be it.
    assert scratch.pick_address("10.9.0.0/24", gateway=None, used=[]) == "10.9.0.2"
    assert scratch.pick_address("10.9.0.0/24", gateway="10.9.0.254", used=[]) == "10.9.0.1"


def test_pick_address_prefers_the_previous_one_while_free() -> None:
    pick = scratch.pick_address
    assert pick("10.9.0.0/24", gateway="10.9.0.1", used=[], preferred=["10.9.0.77"]) == "10.9.0.77"
    # Taken, the gateway, outside the subnet, the broadcast address or garbage: not used.
    for bad in ("10.9.0.77", "10.9.0.1", "10.8.0.5", "10.9.0.255", "10.9.0.0", "nonsense", None, ""):
        assert pick("10.9.0.0/24", gateway="10.9.0.1", used=["10.9.0.77"], preferred=[bad]) == "10.9.0.2"
    assert pick("10.9.0.0/24", gateway="10.9.0.1", used=[], preferred=[None, "10.9.0.9"]) == "10.9.0.9"


def test_pick_address_keeps_other_names_addresses_back_until_full() -> None:
    pick = scratch.pick_address
    assert pick("10.9.0.0/24", gateway="10.9.0.1", used=[], reserved=["10.9.0.2"]) == "10.9.0.3"
    # A /30 has two hosts: the gateway and one more, reserved for another name but not in use.
    assert pick("10.9.0.0/30", gateway="10.9.0.1", used=[], reserved=["10.9.0.2"]) == "10.9.0.2"
    with pytest.raises(TargetError, match=r"no free address left in scratch\.subnet 10\.9\.0\.0/30"):
        pick("10.9.0.0/30", gateway="10.9.0.1", used=["10.9.0.2"])


def test_mac_follows_the_address() -> None:
    assert scratch.mac_address("10.231.0.7") == "02:68:76:e7:00:07"
    assert scratch.mac_address("10.231.0.7") != scratch.mac_address("10.231.1.7")


def test_address_book_keeps_the_latest_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HVSUITE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(scratch, "ADDRESS_BOOK_SIZE", 3)
    for i in range(5):
        scratch._remember({f"s{i}": f"10.9.0.{i + 2}"})
    scratch._remember({"s2": "10.9.0.50"})
    assert scratch._address_book() == {"s3": "10.9.0.5", "s4": "10.9.0.6", "s2": "10.9.0.50"}


def test_address_pool_hands_out_distinct_addresses_to_parallel_creations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HVSUITE_CACHE_DIR", str(tmp_path))
    reads: list[str] = []

    def containers(network: str) -> list[dict[str, object]]:
        reads.append(network)
        return [
            # Stopped: only its label tells its address.
            {"Name": "stopped", "Config": {"Labels": {scratch.ADDRESS_LABEL: "10.9.0.2"}}},
            # Running without a label (not made by this suite, or with old flags).
            {"Name": "other", "NetworkSettings": {"Networks": {"net": {"IPAddress": "10.9.0.4"}}}},
            # The old container of a server being recreated.
            {"Name": "again", "NetworkSettings": {"Networks": {"net": {"IPAddress": "10.9.0.3"}}}},
        ]

    monkeypatch.setattr(scratch, "ensure_network", lambda settings: "10.9.0.1")
    monkeypatch.setattr(scratch, "_network_containers", containers)
    pool = scratch._AddressPool(ScratchSettings(network="net", subnet="10.9.0.0/24"))
    assert pool.allocate("again", previous="10.9.0.3") == "10.9.0.3"
    with ThreadPoolExecutor(max_workers=8) as threads:
        got = list(threads.map(lambda i: pool.allocate(f"s{i}", previous=""), range(8)))
    assert len(set(got)) == 8 and not set(got) & {"10.9.0.1", "10.9.0.2", "10.9.0.3", "10.9.0.4"}
    assert reads == ["net"]
    # An address another run took meanwhile is not handed out again; the containers are read again.
    pool.taken("10.9.0.20")
    assert pool.allocate("late", previous="10.9.0.20") != "10.9.0.20"
    assert reads == ["net", "net"]
    # Recreated later under its name, a server gets its booked address back.
    assert (
        scratch._AddressPool(ScratchSettings(network="net", subnet="10.9.0.0/24")).allocate("s5", previous="")
        == got[5]
    )


def test_roles_are_checked() -> None:
    assert scratch._check_roles(["probe", "primary", "probe"]) == ("probe", "primary")
    for bad in ("", "a,b", " padded"):
        with pytest.raises(TargetError, match="invalid role"):
            scratch._check_roles([bad])


# --- the command line ----------------------------------------------------------------------


def test_cli_list_shows_roles(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    row = scratch.ServerInfo("hvs-x", "running", "10.9.0.2", True, "now", ("control-plane", "worker"))
    monkeypatch.setattr(scratch, "list_servers", lambda settings: [row])
    assert cli.main(["list"]) == 0
    header, line = capsys.readouterr().out.splitlines()
    assert header.split() == ["NAME", "STATE", "ADDRESS", "IMAGE", "ROLES", "CREATED"]
    assert line.split() == ["hvs-x", "running", "10.9.0.2", "current", "control-plane,worker", "now"]


def test_cli_creates_several_servers_at_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    asked: dict[str, object] = {}

    def fake_fleet(servers: dict[str, list[str]], settings: object, *, rebuild: bool) -> dict[str, object]:
        asked.update(servers=dict(servers), rebuild=rebuild)
        return {
            name: (
                Target(name, f"10.9.0.{i + 2}", 22, "root", tmp_path, tuple(roles), "scratch", ("kh",)),
                scratch.CreateReport(name, True, False, 0.0, 1.25),
            )
            for i, (name, roles) in enumerate(servers.items())
        }

    monkeypatch.setattr(scratch, "create_fleet", fake_fleet)
    assert cli.main(["create", "a1", "a2", "--role", "worker", "--role", "probe", "--rebuild"]) == 0
    assert asked == {"servers": {"a1": ["worker", "probe"], "a2": ["worker", "probe"]}, "rebuild": True}
    out = capsys.readouterr().out
    assert "created a1 (ssh://root@10.9.0.2:22) roles worker,probe: ssh ready in 1.25 s" in out
    assert "created a2 (ssh://root@10.9.0.3:22)" in out
    assert "2 server(s) ready in " in out


# --- a real fleet --------------------------------------------------------------------------


def ssh(target: Target, command: str, *, timeout: float = 60) -> tuple[int, str]:
    client = open_client(target.endpoint, timeout=10)
    try:
        code, out, err = run(client, command, timeout=timeout)
    finally:
        client.close()
    return code, (out + err).strip()


def exec_in(name: str, command: str) -> subprocess.CompletedProcess[str]:
    return podman("exec", name, "sh", "-c", command, check=False, timeout=60)


def address_of(name: str, network: str) -> tuple[str, str]:
    """(IP address, MAC address) on ``network``."""
    data = inspect("container", name) or {}
    networks = (data.get("NetworkSettings") or {}).get("Networks") or {}
    attached = networks.get(network) or {}
    return attached.get("IPAddress") or "", attached.get("MacAddress") or ""


def assert_works(target: Target, *, running: bool = False) -> None:
    """Reachable by SSH and by `podman exec`; with `running`, systemd reports running too."""
    code, out = ssh(target, "true")
    assert code == 0, f"{target.name}: ssh `true` exited {code}: {out}"
    proc = exec_in(target.name, "true")
    assert proc.returncode == 0, f"{target.name}: podman exec exited {proc.returncode}: {proc.stderr}"
    if running:
        _code, state = ssh(target, "systemctl is-system-running --wait", timeout=90)
        if state != "running":
            _code, failed = ssh(target, "systemctl --failed --no-legend --plain")
            pytest.fail(f"{target.name}: systemd is {state!r}; failed units:\n{failed}")


def wait_back(target: Target, network: str) -> None:
    """After podman start/restart: same address (and MAC), SSH answers again."""
    expected = (target.address, scratch.mac_address(target.address))
    assert address_of(target.name, network) == expected, f"{target.name} changed its address"
    wait_for_ssh(target.endpoint, timeout=60)


def assert_own_cgroup_tree(name: str) -> None:
    # systemd lives in the server's own name=systemd tree: no host-wide bind shows on top.
    top = "awk '$5 == \"/sys/fs/cgroup/systemd\" { r = $4 } END { print r }' /proc/self/mountinfo"
    proc = exec_in(name, top)
    assert proc.stdout.strip() == "/", f"{name}: /sys/fs/cgroup/systemd is mounted from {proc.stdout!r}"
    proc = exec_in(name, "grep name=systemd /proc/1/cgroup")
    assert proc.stdout.strip().endswith(":name=systemd:/init.scope"), f"{name}: {proc.stdout!r}"


class Laps:
    """Prints how long each step of a long test took (the CI log shows where time goes)."""

    def __init__(self) -> None:
        self.began = self.last = time.monotonic()

    def __call__(self, what: str) -> None:
        now = time.monotonic()
        print(f"{now - self.began:6.1f} s  +{now - self.last:5.1f} s  {what}")
        self.last = now


@needs_podman
def test_fleet_survives_losing_members(caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings().scratch
    run_id = uuid.uuid4().hex[:6]
    a, b, c = (f"{PREFIX}-{run_id}-{x}" for x in "abc")
    old = f"{PREFIX}-{run_id}-old"
    lap = Laps()
    try:
        # A suite server made with the old run flags (created, never started) goes first.
        build = ensure_image(scratch.recipe_for(settings))
        podman(
            "create", "--name", old, "--runtime", "runc", "--network", "none",
            "--label", f"{SUITE_LABEL}={SUITE_LABEL_VALUE}",
            "--label", f"{ROLE_LABEL}={scratch.SCRATCH_ROLE}",
            "--label", f"{RECIPE_LABEL}=old",
            build.image_id or build.image, "sleep", "1",
            timeout=60,
        )  # fmt: skip
        with caplog.at_level(logging.WARNING, logger="targets.scratch"):
            roles = {a: ["control-plane"], b: ["worker"], c: ["worker", "probe"]}
            fleet = scratch.create_fleet(roles, settings)
        assert not exists("container", old)
        assert any("old run flags" in r.message and old in r.message for r in caplog.records), caplog.text
        ta, tb, tc = (fleet[name][0] for name in (a, b, c))
        lap("fleet of 3 created in parallel, the old-flag server removed")
        assert (ta.roles, tb.roles, tc.roles) == (("control-plane",), ("worker",), ("worker", "probe"))
        assert len({ta.address, tb.address, tc.address}) == 3
        listed = {row.name: row for row in scratch.list_servers(settings)}
        assert listed[c].roles == ("worker", "probe") and listed[c].current
        for name in (a, b, c):
            assert_own_cgroup_tree(name)
        code, out = ssh(tb, "systemd-run --unit=hvs-keepalive sleep 10000")
        assert code == 0, out
        lap("checked roles, addresses, cgroup trees; keepalive service started in b")

        podman("stop", a, timeout=60)
        for target in (tb, tc):
            assert_works(target)
        stopped = {row.name: row for row in scratch.list_servers(settings)}[a]
        assert stopped.state == "exited" and stopped.address == ta.address
        lap("stopped a: b, c work")

        podman("start", a, timeout=60)
        wait_back(ta, settings.network)
        assert_works(ta)
        lap("started a: same address, works")

        podman("kill", c, timeout=60)
        for target in (ta, tb):
            assert_works(target)
        lap("killed c: a, b work")
        podman("start", c, timeout=60)
        wait_back(tc, settings.network)
        assert_works(tc)
        lap("started c: same address, works")

        assert scratch.destroy(a)
        for target in (tb, tc):
            assert_works(target)
        assert ssh(tb, "systemctl is-active hvs-keepalive") == (0, "active")
        lap("destroyed a: b, c work, b's keepalive runs")

        podman("restart", c, timeout=120)
        wait_back(tc, settings.network)
        for target in (tb, tc):
            assert_works(target, running=True)
            assert_own_cgroup_tree(target.name)
        assert ssh(tb, "systemctl is-active hvs-keepalive") == (0, "active")
        lap("restarted c: same address; b, c work, systemd running")

        # Recreated under its name, a server gets its old address back.
        again, report = scratch.create(a, settings, roles=("control-plane",))
        assert report.created and again.address == ta.address
        lap("recreated a: its old address again")
    finally:
        for name in (a, b, c):
            scratch.destroy(name)
        podman("rm", "--force", old, check=False, timeout=60)
        for name in (a, b, c, old):
            assert not exists("container", name)
            assert not exists("volume", scratch.volume_name(name))
        lap("cleaned up")


def test_inotify_limits_are_raised_once_and_put_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HVSUITE_CACHE_DIR", str(tmp_path / "cache"))
    proc = tmp_path / "inotify"
    proc.mkdir()
    (proc / "max_user_instances").write_text("128\n")
    (proc / "max_user_watches").write_text("1048576\n")  # already above the minimum: kept
    monkeypatch.setattr(scratch, "INOTIFY_DIR", proc)
    scratch._inotify_headroom()
    scratch._inotify_headroom()  # the original is recorded once, not the raised value
    assert (proc / "max_user_instances").read_text() == "1024\n"
    assert (proc / "max_user_watches").read_text() == "1048576\n"
    scratch._restore_inotify()
    assert (proc / "max_user_instances").read_text() == "128\n"
