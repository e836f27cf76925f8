"""The ops against a real scratch server (podman, systemd, SSH): apply, prove the result
from a fresh connection, then the idempotence gate must find nothing left to change."""

from __future__ import annotations

import functools
import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from apply import ops
from apply.artifacts import ArtifactStore, install
from apply.redact import Redactor
from apply.runner import ApplyError, Host, idempotence_gate
from settings.base import ArtifactPin
from settings.model import ScratchSettings
from targets import scratch
from transport.ssh import fabric_connection

SERVER = "hvs-steps-it"
UNIT = """[Unit]
Description=hvsuite steps integration test

[Service]
ExecStart=/bin/sleep infinity
"""


@pytest.fixture(scope="module")
def server_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed: no scratch server")
    target, _ = scratch.create(SERVER, ScratchSettings())
    connect = functools.partial(fabric_connection, target.endpoint, timeout=10)

    host = Host(
        SERVER,
        connect(),
        lock_dir=tmp_path_factory.mktemp("locks"),
        redactor=Redactor(["it-secret-value"]),
        connect=connect,
    )
    try:
        yield host
    finally:
        host.close()
        scratch.destroy(SERVER)


def apply_all(host: Host, store: ArtifactStore) -> None:
    ops.packages(host, ["openssh-server", "systemd"])
    ops.directory(host, "/srv/hvs-it", owner="root", group="adm", mode="0750")
    ops.file(host, "/srv/hvs-it/app.conf", "port = 9090\n", mode="0640", validate="grep -q '^port = ' {path}")
    ops.line(host, "/srv/hvs-it/extra.conf", "debug = false", regex=r"^debug\s*=")
    ops.file(host, "/etc/systemd/system/hvs-it.service", UNIT)
    ops.daemon_reload(host, units=["hvs-it.service"])
    ops.service(host, "hvs-it.service", enabled=True, running=True)
    ops.sysctls(host, {"net.ipv4.tcp_syncookies": 1}, persist_file="/etc/sysctl.d/90-hvs-it.conf")
    ops.command(host, "touch /srv/hvs-it/stamp", creates="/srv/hvs-it/stamp")
    install(host, store, "tool")
    ops.absent(host, "/srv/hvs-it/never-there")


def test_ops_on_a_scratch_server(server_host: Host, tmp_path: Path) -> None:
    payload = b"#!/bin/sh\necho hvs-it-tool\n"
    source = tmp_path / "tool"
    source.write_bytes(payload)
    pin = ArtifactPin(
        version="1",
        url=source.as_uri(),
        sha256=hashlib.sha256(payload).hexdigest(),
        dest="/opt/hvs-it/bin/tool",
    )
    store = ArtifactStore({"tool": pin}, cache_dir=tmp_path / "cache")

    apply_all(server_host, store)
    assert server_host.changes, "the first apply on a new server changed nothing"

    # Proof from a new connection, not from the ops' own results.
    fresh = server_host.fresh()
    assert fresh.run("stat -c %U:%G:%a /srv/hvs-it").stdout.strip() == "root:adm:750"
    assert fresh.run("cat /srv/hvs-it/app.conf").stdout == "port = 9090\n"
    assert fresh.run("cat /srv/hvs-it/extra.conf").stdout == "debug = false\n"
    assert fresh.run("stat -c %a /srv/hvs-it/app.conf").stdout.strip() == "640"
    assert fresh.run("systemctl is-active hvs-it.service").stdout.strip() == "active"
    enabled = fresh.run("systemctl is-enabled hvs-it.service", check=False).stdout.strip()
    assert enabled in ("enabled", "static")
    assert fresh.run("/opt/hvs-it/bin/tool").stdout.strip() == "hvs-it-tool"
    # No temp files left beside the destinations.
    assert fresh.run("ls -A /srv/hvs-it").stdout.split() == ["app.conf", "extra.conf", "stamp"]
    fresh.close()

    # A file rejected by its validator never replaces the good one.
    with pytest.raises(ApplyError, match="rejected"):
        ops.file(server_host, "/srv/hvs-it/app.conf", "garbage\n", validate="grep -q '^port = ' {path}")
    assert server_host.run("cat /srv/hvs-it/app.conf").stdout.startswith("port = 9090")

    assert idempotence_gate(server_host, lambda check: apply_all(check, store)) == []

    # Drift is detected in check mode with a diff, without touching the file.
    server_host.run("echo 'port = 1' > /srv/hvs-it/app.conf")
    check = server_host.with_mode("check")
    result = ops.file(check, "/srv/hvs-it/app.conf", "port = 9090\n", mode="0640")
    assert result.changed and result.diff is not None and "-port = 1" in result.diff
    assert server_host.run("cat /srv/hvs-it/app.conf").stdout == "port = 1\n"
