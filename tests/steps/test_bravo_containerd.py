"""Team Bravo's steps as data: settings in, config and commands out, no SSH."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from apply import ops
from apply.facts import AptListsAge, DebPackages, FileInfo, ServiceState
from apply.runner import ApplyError, Host
from apply.testing import FakeConnection, fake_context, fake_host
from settings.loader import load_settings
from settings.model import Settings
from steps.base import flintlock
from steps.bravo import containerd, flintlock_runtime, registry
from steps.bravo.settings import BravoSettings

SCRATCH = load_settings().effective_profile("scratch")
PRODUCTION = load_settings().effective_profile("production")

CRI = "io.containerd.grpc.v1.cri"
DEVMAPPER = "io.containerd.snapshotter.v1.devmapper"
ACTIVE = "LoadState=loaded\nActiveState=active\nUnitFileState=enabled\nNeedDaemonReload=no\n"
INACTIVE = "LoadState=loaded\nActiveState=inactive\nUnitFileState=disabled\nNeedDaemonReload=no\n"
# `ctr plugins ls` as containerd 1.6 prints it: padded columns, trailing blanks included.
PLUGINS_LS = "".join(
    f"{kind:<32}{name:<25}{platforms:<15}{status:<10}\n"
    for kind, name, platforms, status in [
        ("TYPE", "ID", "PLATFORMS", "STATUS"),
        ("io.containerd.content.v1", "content", "-", "ok"),
        ("io.containerd.snapshotter.v1", "aufs", "linux/amd64", "skip"),
        ("io.containerd.snapshotter.v1", "devmapper", "linux/amd64", "error"),
        ("io.containerd.snapshotter.v1", "overlayfs", "linux/amd64", "ok"),
        ("io.containerd.grpc.v1", "cri", "linux/amd64", "ok"),
    ]
)


PAUSE = "localhost/hvsuite-k8s/pause:3.2"


def _config(bravo: BravoSettings, *, scratch: bool, devmapper: bool) -> dict:
    profile = SCRATCH if scratch else PRODUCTION
    text = containerd.render_config(
        bravo,
        restrict_oom_score_adj=bravo.oom_score_adj_restricted(profile),
        devmapper=devmapper,
        sandbox_image=PAUSE,
    )
    return tomllib.loads(text)


def test_config_has_systemd_cgroups_overlayfs_and_debians_cni_dir() -> None:
    config = _config(BravoSettings(), scratch=False, devmapper=False)
    assert config["version"] == 2
    cri = config["plugins"][CRI]
    assert cri["containerd"]["snapshotter"] == "overlayfs"
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runc["options"]["SystemdCgroup"] is True
    assert cri["cni"] == {"bin_dir": "/usr/lib/cni", "conf_dir": "/etc/cni/net.d"}


@pytest.mark.parametrize(
    ("setting", "scratch", "expected"),
    [(None, True, True), (None, False, False), (True, False, True), (False, True, False)],
)
def test_restrict_oom_score_adj_follows_the_profile_unless_set(
    setting: bool | None, scratch: bool, expected: bool
) -> None:
    config = _config(BravoSettings(restrict_oom_score_adj=setting), scratch=scratch, devmapper=False)
    assert config["plugins"][CRI]["restrict_oom_score_adj"] is expected


def test_devmapper_section_only_where_device_mapper_exists() -> None:
    assert DEVMAPPER not in _config(BravoSettings(), scratch=True, devmapper=False)["plugins"]
    section = _config(BravoSettings(), scratch=False, devmapper=True)["plugins"][DEVMAPPER]
    assert section["pool_name"] == "flintlock-thinpool"
    assert section["base_image_size"] == "10GB"


def _fresh_host(tmp_path: Path) -> tuple[Host, FakeConnection]:
    conn = FakeConnection()
    conn.set_fact(DebPackages(), "")
    conn.set_fact(AptListsAge(), "now=1000\nnewest=900\n")
    conn.set_fact(ServiceState("containerd"), INACTIVE)
    conn.set_fact(ServiceState(containerd.THINPOOL_UNIT), INACTIVE)
    return fake_host(conn, lock_dir=tmp_path), conn


def _changing(host: Host) -> list[str]:
    return [command for result in host.changes for command in result.commands]


def test_fresh_host_installs_validates_the_config_and_starts_containerd(tmp_path: Path) -> None:
    host, conn = _fresh_host(tmp_path)
    assert containerd.apply(fake_context(host, profile="scratch")).changed
    commands = _changing(host)
    assert (
        commands[0]
        == f"{ops.APT_GET} install --no-install-recommends containerd containernetworking-plugins runc"
    )
    config_put = next(c for c in commands if c.startswith("put /etc/containerd/config.toml"))
    assert "validated by 'containerd --config {path} config dump >/dev/null'" in config_put
    assert commands[-2:] == ["systemctl enable -- containerd", "systemctl start -- containerd"]
    assert not any("thinpool" in c or "dmsetup" in c for c in commands)
    # The validator ran against the temp file before the swap.
    validate = next(i for i, c in enumerate(conn.commands) if c.startswith("containerd --config"))
    swap = next(i for i, c in enumerate(conn.commands) if c.startswith("mv -f --") and "config.toml" in c)
    assert validate < swap


def test_devmapper_hosts_get_the_thin_pool_unit_before_containerd_is_configured(tmp_path: Path) -> None:
    host, _ = _fresh_host(tmp_path)
    containerd.apply(fake_context(host, profile="production"))
    commands = _changing(host)
    pool_start = commands.index(f"systemctl start -- {containerd.THINPOOL_UNIT}")
    config = next(i for i, c in enumerate(commands) if c.startswith("put /etc/containerd/config.toml"))
    assert pool_start < config
    assert f"{ops.APT_GET} install --no-install-recommends dmsetup" in commands
    assert any(c.startswith(f"put {containerd.THINPOOL_SCRIPT}") and "sh -n" in c for c in commands)


def test_thin_pool_script_is_idempotent_and_uses_the_settings() -> None:
    bravo = BravoSettings()
    script = ops.render(
        containerd.TEMPLATES / "hvsuite-thinpool.sh.j2",
        {
            "pool_name": "pool-x",
            "data_dir": "/srv/pool",
            "data_size": "50G",
            "metadata_size": "1G",
            "block_sectors": bravo.devmapper.block_sectors,
            "low_water_mark": bravo.devmapper.low_water_mark,
        },
    )
    # Exits early when the pool exists; never truncates an existing backing file.
    assert script.index('dmsetup status "$pool"') < script.index("dmsetup create")
    assert '[ -f "$dir/data" ] || truncate -s 50G "$dir/data"' in script
    assert re.search(r"thin-pool \$metadata_dev \$data_dev 128 32768 1 skip_block_zeroing", script)


def _converged_host(tmp_path: Path, bravo: BravoSettings, config: str) -> tuple[Host, FakeConnection]:
    conn = FakeConnection(files={bravo.config_path: config.encode()})
    conn.set_fact(DebPackages(), "".join(f"{p}\t1.0\tii \n" for p in bravo.packages))
    conn.set_fact(FileInfo(bravo.cni_conf_dir), "directory|root|root|755|4096\n")
    conn.set_fact(FileInfo(bravo.config_path), f"regular file|root|root|644|{len(config)}\n")
    conn.set_fact(ServiceState("containerd"), ACTIVE)
    return fake_host(conn, lock_dir=tmp_path), conn


def test_converged_host_changes_nothing(tmp_path: Path) -> None:
    bravo = BravoSettings()
    config = containerd.render_config(
        bravo, restrict_oom_score_adj=True, devmapper=False, sandbox_image=PAUSE
    )
    host, _ = _converged_host(tmp_path, bravo, config)
    assert containerd.apply(fake_context(host, profile="scratch")).changed is False
    assert host.changes == []


def test_changed_config_restarts_containerd(tmp_path: Path) -> None:
    bravo = BravoSettings()
    old = containerd.render_config(bravo, restrict_oom_score_adj=False, devmapper=False, sandbox_image=PAUSE)
    host, _ = _converged_host(tmp_path, bravo, old)
    containerd.apply(fake_context(host, profile="scratch"))
    assert [result.op for result in host.changes] == [f"file {bravo.config_path}", "service containerd"]
    assert host.changes[1].commands == ["systemctl restart -- containerd"]
    assert "-    restrict_oom_score_adj = false" in (host.changes[0].diff or "")


def test_check_mode_reports_the_change_and_runs_nothing(tmp_path: Path) -> None:
    host, conn = _fresh_host(tmp_path)
    host = host.with_mode("check")
    containerd.apply(fake_context(host, profile="scratch"))
    assert host.changes
    assert not conn.uploads
    assert not any(c.startswith(("systemctl start", "mv -f", ops.APT_GET)) for c in conn.commands)


def test_plugin_table_parses_and_reports_snapshotter_status() -> None:
    plugins = containerd.ContainerdPlugins().parse(PLUGINS_LS)
    assert containerd.snapshotter_status(plugins, "overlayfs") == "ok"
    assert containerd.snapshotter_status(plugins, "devmapper") == "error"
    assert containerd.snapshotter_status(plugins, "zfs") == "absent"
    with pytest.raises(ValueError, match="not a 'ctr plugins ls' table"):
        containerd.ContainerdPlugins().parse("ctr: failed to dial\n")


def test_run_container_closes_stdin_and_rejects_bad_ids(tmp_path: Path) -> None:
    conn = FakeConnection()
    host = fake_host(conn, lock_dir=tmp_path)
    containerd.run_container(
        host, "hvsuite", "r:5000/a/b:t", "hvsuite-pull-1", ["echo", "x y"], snapshotter="overlayfs"
    )
    assert conn.commands == [
        "ctr -n hvsuite run --rm --snapshotter overlayfs r:5000/a/b:t hvsuite-pull-1 echo 'x y' </dev/null"
    ]
    with pytest.raises(ValueError, match="container id"):
        containerd.run_container(host, "hvsuite", "r/a:t", "bad id; rm -rf /", snapshotter="overlayfs")


def test_registry_config_is_valid_json_on_the_declared_port() -> None:
    settings = load_settings()
    text = registry.render_config(settings.bravo, settings.port("Bravo", registry.PORT_NAME))
    header, _, body = text.partition("\n")
    assert header.startswith("#")
    config = json.loads(body)
    assert config["http"]["addr"] == ":5000"
    assert config["storage"]["filesystem"]["rootdirectory"] == "/var/lib/docker-registry"
    assert "auth" not in config


def test_registry_port_missing_is_a_clear_error() -> None:
    settings = Settings(ports=[{"name": "ssh", "team": "Alpha", "port": 22, "sources": ["world"]}])
    with pytest.raises(ValueError, match="ports: no rule named 'oci-registry' for team Bravo"):
        settings.port("Bravo", registry.PORT_NAME)


def test_settings_reject_prometheus_on_flintlocks_port() -> None:
    ports = [rule.model_dump() for rule in load_settings().ports]
    for rule in ports:
        if rule["name"] == "prometheus":
            rule["port"] = 9090
    with pytest.raises(ValueError, match="9090/tcp is declared by both 'flintlock-grpc' and 'prometheus'"):
        Settings(ports=ports)


# -- flintlock runtime (Bravo starts flintlockd once containerd serves) -----------------------


def _flintlock_settings() -> Settings:
    pins = {
        name: {"version": "v1.0.0", "url": "https://example.invalid/x", "sha256": "0" * 64, "dest": dest}
        for name, dest in [
            ("firecracker", "/usr/local/bin/firecracker"),
            ("cloud-hypervisor", "/usr/local/bin/cloud-hypervisor"),
            ("flintlockd", "/usr/local/bin/flintlockd"),
        ]
    }
    return load_settings(overrides={"artifacts": pins})


def _flintlock_host(
    tmp_path: Path,
    *,
    flintlockd: str,
    containerd_serves: bool = True,
    cert_newer: bool = False,
    containerd_restarted: bool = False,
    listens: bool = True,
    mode: str = "apply",
) -> tuple[Host, FakeConnection, Settings]:
    """A host whose bridge and flintlockd units are already what Base wrote."""
    settings = _flintlock_settings()
    unit = flintlock.render_unit(settings, "eno1")
    bridge = ops.render(flintlock.TEMPLATES / "hvsuite-bridge.service.j2", {"bridge": settings.base.bridge})
    conn = FakeConnection(
        files={flintlock.UNIT_FILE: unit.encode(), flintlock.BRIDGE_UNIT_FILE: bridge.encode()}
    )
    conn.set_fact(flintlock.DefaultRouteInterface(), "default via 10.0.0.1 dev eno1\n")
    conn.set_fact(FileInfo(flintlock.UNIT_FILE), f"regular file|root|root|644|{len(unit)}\n")
    conn.set_fact(FileInfo(flintlock.BRIDGE_UNIT_FILE), f"regular file|root|root|644|{len(bridge)}\n")
    conn.set_fact(ServiceState(flintlock.BRIDGE_UNIT), ACTIVE)
    conn.set_fact(ServiceState(flintlock.UNIT), flintlockd)
    conn.set_fact(flintlock_runtime.containerd_serves(settings), "yes\n" if containerd_serves else "no\n")
    conn.set_fact(flintlock_runtime.certificate_newer(settings), "yes\n" if cert_newer else "no\n")
    restarted = "yes\n" if containerd_restarted else "no\n"
    conn.set_fact(flintlock_runtime.containerd_restarted(settings), restarted)
    conn.respond(flintlock_runtime.listen_command(settings.base.grpc_port), (0 if listens else 1, "", ""))
    return fake_host(conn, mode=mode, lock_dir=tmp_path), conn, settings


def test_flintlockd_is_enabled_started_and_waited_for_once_containerd_serves(tmp_path: Path) -> None:
    host, conn, settings = _flintlock_host(tmp_path, flintlockd=INACTIVE)
    flintlock_runtime.apply(fake_context(host, settings))
    assert _changing(host) == [
        "systemctl enable -- flintlockd.service",
        "systemctl start -- flintlockd.service",
    ]
    start = conn.commands.index("systemctl start -- flintlockd.service")
    assert conn.commands.index(flintlock_runtime.listen_command(9090)) > start
    # The containerd gate is read before anything else happens.
    assert conn.commands[0] == flintlock_runtime.containerd_serves(settings).command


def test_flintlockd_is_never_started_without_containerd(tmp_path: Path) -> None:
    host, conn, settings = _flintlock_host(tmp_path, flintlockd=INACTIVE, containerd_serves=False)
    with pytest.raises(
        ApplyError, match=r"flintlockd needs containerd serving on /run/containerd/containerd\.sock"
    ):
        flintlock_runtime.apply(fake_context(host, settings))
    assert not any(
        c.startswith("systemctl ") and "flintlockd" in c and "show" not in c for c in conn.commands
    )


def test_running_flintlockd_with_current_certificate_changes_nothing(tmp_path: Path) -> None:
    host, conn, settings = _flintlock_host(tmp_path, flintlockd=ACTIVE)
    flintlock_runtime.apply(fake_context(host, settings))
    assert host.changes == []
    assert flintlock_runtime.listen_command(9090) not in conn.commands


@pytest.mark.parametrize(
    ("cert_newer", "containerd_restarted"), [(True, False), (False, True)], ids=["new-cert", "containerd"]
)
def test_flintlockd_restarts_on_a_newer_certificate_or_a_restarted_containerd(
    tmp_path: Path, cert_newer: bool, containerd_restarted: bool
) -> None:
    host, _, settings = _flintlock_host(
        tmp_path, flintlockd=ACTIVE, cert_newer=cert_newer, containerd_restarted=containerd_restarted
    )
    flintlock_runtime.apply(fake_context(host, settings))
    assert _changing(host) == ["systemctl restart -- flintlockd.service"]


def test_a_changed_unit_restarts_a_running_flintlockd(tmp_path: Path) -> None:
    host, conn, settings = _flintlock_host(tmp_path, flintlockd=ACTIVE)
    conn.files[flintlock.UNIT_FILE] = b"[Service]\nExecStart=/usr/local/bin/flintlockd run --insecure\n"
    flintlock_runtime.apply(fake_context(host, settings))
    commands = _changing(host)
    assert commands[-2:] == ["systemctl daemon-reload", "systemctl restart -- flintlockd.service"]


def test_flintlockd_that_does_not_listen_fails_with_its_journal(tmp_path: Path) -> None:
    host, conn, settings = _flintlock_host(tmp_path, flintlockd=INACTIVE, listens=False)
    conn.respond(
        re.compile(r"journalctl -u flintlockd.service .*"), (0, "dial containerd: no such file\n", "")
    )
    with pytest.raises(ApplyError, match=r"did not listen on 9090/tcp(.|\n)*dial containerd"):
        flintlock_runtime.apply(fake_context(host, settings))


def test_check_mode_reports_the_start_and_neither_starts_nor_waits(tmp_path: Path) -> None:
    host, conn, settings = _flintlock_host(
        tmp_path, flintlockd=INACTIVE, containerd_serves=False, mode="check"
    )
    flintlock_runtime.apply(fake_context(host, settings))
    assert [r.op for r in host.changes] == ["service flintlockd.service"]
    assert not any(c.startswith("systemctl start") for c in conn.commands)
    assert flintlock_runtime.listen_command(9090) not in conn.commands


def test_listen_wait_is_bounded_and_names_the_port() -> None:
    command = flintlock_runtime.listen_command(9090, timeout=30)
    assert "-lt 60 ]" in command and "sport = :9090" in command and "sleep 0.5" in command


def test_the_package_plugins_are_copied_where_containerd_looks_elsewhere() -> None:
    from steps.bravo.containerd import PACKAGE_PLUGINS, package_plugins

    host = fake_host(FakeConnection())
    package_plugins(host, "/usr/lib/cni")
    assert host.results == []  # the package's own directory: nothing to do
    conn = FakeConnection(responses={re.compile(r".*"): (0, "", "")})
    host = fake_host(conn)
    package_plugins(host, "/opt/cni/bin")
    installs = [c for c in conn.commands if c.startswith("install -m 0755 /usr/lib/cni/")]
    assert [c.split()[-1] for c in installs] == [f"/opt/cni/bin/{p}" for p in PACKAGE_PLUGINS]
