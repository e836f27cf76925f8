"""Base's step logic as data: virtualization facts, version pins, the flintlockd unit."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from apply.runner import ApplyError
from apply.testing import FakeConnection, fake_context, fake_host
from settings.base import ArtifactPin, PortRule
from settings.loader import load_settings
from settings.model import Settings
from steps.base import flintlock, hypervisors

SHA = "0" * 64


def _pin(version: str, dest: str) -> ArtifactPin:
    return ArtifactPin(version=version, url="https://example.invalid/x", sha256=SHA, dest=dest)


def _settings(**changes) -> Settings:
    artifacts = {
        "firecracker": _pin("v1.10.0", "/usr/local/bin/firecracker"),
        "cloud-hypervisor": _pin("v49.0", "/usr/local/bin/cloud-hypervisor"),
        "flintlockd": _pin("v0.9.0", "/usr/local/bin/flintlockd"),
        "microvm-kernel": _pin("6.1", "/var/lib/hvsuite/microvm/vmlinux"),
        "microvm-rootfs": _pin("22.04", "/var/lib/hvsuite/microvm/rootfs.ext4"),
    }
    return load_settings(None, {"artifacts": artifacts, **changes})


def test_virtualization_fact_and_problems() -> None:
    fact = hypervisors.VirtualizationFact()
    assert hypervisors.virtualization_problems(fact.parse("vmx\nkvm=yes\n")) == []
    problems = hypervisors.virtualization_problems(fact.parse("kvm=no\n"))
    assert len(problems) == 2 and "vmx nor svm" in problems[0] and "/dev/kvm" in problems[1]


def test_missing_artifact_declarations_are_named() -> None:
    with pytest.raises(ApplyError, match=r"\[artifacts.firecracker\]"):
        hypervisors.pins(Settings())


@pytest.mark.parametrize(
    ("output", "pinned", "same"),
    [
        ("Firecracker v1.10.0\n", "v1.10.0", True),
        ("cloud-hypervisor v49.0.0\n", "v49.0", True),
        ("cloud-hypervisor v48.0.0\n", "v49.0", False),
        ("no version here", "v0.9.0", False),
    ],
)
def test_version_comparison(output: str, pinned: str, same: bool) -> None:
    assert hypervisors.same_version(hypervisors.parse_version(output), pinned) is same


def test_unit_serves_tls_never_insecure_with_detected_parent() -> None:
    settings = _settings()
    unit = flintlock.render_unit(settings, "enp6s0")
    assert "--insecure" not in unit
    assert "--parent-iface=enp6s0" in unit and "--bridge-name=flkbr0" in unit
    assert "--tls-cert=/etc/flintlock/certs/server.pem" in unit
    assert (
        "--tls-client-validate" in unit and "ConditionPathExists=/etc/flintlock/certs/server-key.pem" in unit
    )


def test_parent_interface_from_the_default_route() -> None:
    conn = FakeConnection(
        {flintlock.DefaultRouteInterface().command: (0, "default via 10.0.0.1 dev eno1 proto static\n", "")}
    )
    assert flintlock.parent_interface(fake_host(conn), _settings()) == "eno1"


def test_undeclared_grpc_port_is_a_clear_error() -> None:
    settings = _settings(ports=[PortRule(name="ssh", team="Alpha", port=22, sources=["world"])])
    with pytest.raises(ApplyError, match=r"base\.grpc_port 9090 is not declared"):
        flintlock.grpc_port_declared(settings)


def test_base_installs_the_unit_but_neither_enables_nor_starts_flintlockd() -> None:
    conn = FakeConnection(
        {
            flintlock.DefaultRouteInterface().command: (0, "default via 10.0.0.1 dev eno1\n", ""),
            re.compile(r"systemctl show .*"): (
                0,
                "LoadState=loaded\nActiveState=inactive\nUnitFileState=disabled\nNeedDaemonReload=no\n",
                "",
            ),
        }
    )
    results = flintlock.unit(fake_context(fake_host(conn), _settings())).ops
    assert any(c.startswith(f"put {flintlock.UNIT_FILE}") for r in results for c in map(str, r.commands))
    changing = [c for c in conn.commands if c.startswith("systemctl ") and not c.startswith("systemctl show")]
    assert not any("flintlockd.service" in c for c in changing), changing
    assert "systemctl start -- hvsuite-flkbr0.service" in conn.commands


def test_base_leaves_a_flintlockd_that_bravo_enabled_and_started_alone() -> None:
    conn = FakeConnection(
        {
            flintlock.DefaultRouteInterface().command: (0, "default via 10.0.0.1 dev eno1\n", ""),
            re.compile(r"systemctl show .*"): (
                0,
                "LoadState=loaded\nActiveState=active\nUnitFileState=enabled\nNeedDaemonReload=no\n",
                "",
            ),
        },
        files={
            flintlock.UNIT_FILE: flintlock.render_unit(_settings(), "eno1").encode(),
        },
    )
    flintlock.unit(fake_context(fake_host(conn), _settings()))
    assert not any(
        c.startswith(("systemctl stop", "systemctl disable", "systemctl restart")) for c in conn.commands
    )


def test_boot_script_is_bounded_and_uses_a_copy_of_the_rootfs() -> None:
    script = flintlock.boot_script(_settings())
    assert "-lt 60 ]" in script and "cp -- /var/lib/hvsuite/microvm/rootfs.ext4" in script
    config = script.split("<<'HVSUITE_JSON'\n", 1)[1].split("HVSUITE_JSON", 1)[0]
    assert json.loads(config)["boot-source"]["kernel_image_path"] == "/var/lib/hvsuite/microvm/vmlinux"


def test_exec_start_readers() -> None:
    line = "ExecStart={ argv[]=/usr/local/bin/flintlockd run --parent-iface=eno1 --tls-cert=x }"
    assert flintlock.tls_only(line) and flintlock.parent_iface_of(line) == "eno1"
    assert not flintlock.tls_only(line + " --insecure")
    assert flintlock.parent_iface_of("ExecStart={ argv[]=flintlockd run }") is None
    assert flintlock.exec_flag(line, "--tls-cert") == "x"
    assert flintlock.exec_flag(line + " --tls-certificate=y", "--tls-cert") == "x"
    assert flintlock.exec_flag("run --tls-cert= ;", "--tls-cert") is None


def test_microvm_boot_sends_the_script_on_stdin_bounded_and_returns_a_failed_boot() -> None:
    conn = FakeConnection({"sh -s": (1, "no boot marker within 60s\n", "")})
    result = flintlock.boot_microvm(fake_host(conn), _settings())
    # A failed boot is returned (its console tail is the evidence), not raised.
    assert result.exit_code == 1 and conn.commands == ["sh -s"]
    assert conn.run_kwargs[-1]["in_stream"].getvalue() == flintlock.boot_script(_settings())
    assert conn.run_kwargs[-1]["timeout"] == _settings().base.microvm_boot_timeout + 30


FAKE_FIRECRACKER = """#!/bin/sh
# argv: --no-api --config-file <path>; keeps the VM's config and plays its console.
cp "$3" "$RECORD"
if [ "$FAKE_BOOT" = ok ]; then echo "Debian GNU/Linux 12 hv ttyS0"; echo "hv login: "; exec sleep 30; fi
echo "Kernel panic - not syncing"; exit 1
"""


@pytest.mark.parametrize("boot", ["ok", "panic"])
@pytest.mark.skipif(not os.access("/run", os.W_OK), reason="the boot script's work directory is under /run")
def test_boot_script_waits_for_the_marker_on_a_copy_of_the_rootfs_and_cleans_up(
    tmp_path: Path, boot: str
) -> None:
    firecracker = tmp_path / "firecracker"
    firecracker.write_text(FAKE_FIRECRACKER)
    firecracker.chmod(0o755)
    rootfs = tmp_path / "rootfs.ext4"
    rootfs.write_bytes(b"rootfs image")
    settings = _settings()
    artifacts = dict(settings.artifacts)
    for name, path in (("firecracker", firecracker), ("microvm-rootfs", rootfs)):
        artifacts[name] = artifacts[name].model_copy(update={"dest": str(path)})
    settings = settings.model_copy(update={"artifacts": artifacts})
    record = tmp_path / "vm.json"
    started = time.monotonic()
    result = subprocess.run(
        ["sh", "-s"],
        input=flintlock.boot_script(settings),
        env={**os.environ, "RECORD": str(record), "FAKE_BOOT": boot},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert time.monotonic() - started < 10, "the script waited although the VM had exited or booted"
    if boot == "ok":
        assert result.returncode == 0 and result.stdout.startswith("boot marker after "), result
    else:
        assert result.returncode == 1 and "no boot marker within" in result.stdout, result
        assert "Kernel panic" in result.stdout, "the console tail is the evidence of a failed boot"
    drive = json.loads(record.read_text())["drives"][0]["path_on_host"]
    assert drive != str(rootfs) and drive.endswith("/rootfs.ext4"), "the VM booted the original rootfs"
    assert not Path(drive).parent.exists(), "the work directory (and the rootfs copy) was left behind"
    assert rootfs.read_bytes() == b"rootfs image"
