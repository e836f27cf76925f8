"""Team Bravo (phase 2): container runtime.

Apply containerd, runc and the CNI plugins with a managed config; then prove from the host
that containerd serves, its snapshotters load, and that an OCI image pulled over the network
from a registry runs to a marker chosen for this run. On scratch (no internet) the registry
is the suite's own and the image one the suite builds; elsewhere a public image.

Flintlock runtime: flintlockd needs containerd (its socket and the devmapper snapshotter), so
Bravo, not Base or Alpha, enables and starts the unit Base installed, once containerd serves
(restarting it when Alpha's certificate on disk is newer than the process, or its unit or
containerd changed), and proves from the controller that its gRPC port completes a TLS
handshake presenting the certificate Alpha issued. Needs the upstream artifacts (flintlockd)
and device-mapper (flintlock's snapshotter).
"""

from __future__ import annotations

import platform
import secrets
import shlex
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from apply.api import Applied, Context
from checks import probes
from checks.image import publish_marker_image
from engine import apply_fixture
from settings.base import EffectiveProfile
from settings.model import Settings
from steps.alpha import tls
from steps.base import flintlock
from steps.bravo import containerd, flintlock_runtime, registry

pytestmark = [pytest.mark.usefixtures("applied"), pytest.mark.smoke]


@apply_fixture
def applied(ctx: Context, settings: Settings, profile: EffectiveProfile) -> None:
    containerd.apply(ctx)
    if settings.bravo.pull_check.resolved_source(profile) == "suite-registry":
        registry.apply(ctx)


@apply_fixture
def applied_flintlock(ctx: Context, applied: None) -> Applied:
    return flintlock_runtime.apply(ctx)


@dataclass(frozen=True)
class PullCase:
    reference: str
    args: tuple[str, ...]
    expected_output: str
    plain_http: bool
    expected_digest: str | None  # the manifest digest the registry holds, when the suite pushed it


@pytest.fixture(scope="module")
def pull_case(remote, settings: Settings, target, profile: EffectiveProfile) -> Iterator[PullCase]:
    """What to pull and what it must print, with a nonce so no earlier image can pass."""
    nonce = secrets.token_hex(8)
    marker = f"hvsuite-oci-marker {nonce}"
    check = settings.bravo.pull_check
    if check.resolved_source(profile) == "public":
        yield PullCase(check.public_reference, (*check.public_args, marker), marker + "\n", False, None)
        return
    # The image is built on the controller around the controller's busybox.
    machine = remote.run("uname -m").stdout.strip()
    if machine != platform.machine():
        pytest.fail(
            f"the marker image is built for the controller's architecture ({platform.machine()}), "
            f"the target is {machine}; set bravo.pull_check.source = 'public'"
        )
    # Pushed from the controller over the network to the registry on its declared port.
    endpoint = f"http://{target.address}:{settings.port('Bravo', registry.PORT_NAME)}"
    pushed = publish_marker_image(endpoint, check.repository, nonce, marker)
    yield PullCase(pushed.reference, (), pushed.expected_output, True, pushed.digest)


@pytest.mark.task("Install containerd")
def test_containerd_service_is_enabled_and_running(host) -> None:
    service = host.service(containerd.SERVICE)
    assert service.is_running
    assert service.is_enabled


@pytest.mark.task("Install containerd")
def test_runc_and_cni_plugins_are_installed(host, settings: Settings) -> None:
    for package in settings.bravo.packages:
        assert host.package(package).is_installed, package
    assert host.run("runc --version").rc == 0
    for plugin in ("bridge", "host-local", "loopback", "portmap"):
        assert host.file(f"{settings.bravo.cni_bin_dir}/{plugin}").is_file, plugin


@pytest.mark.task("Install containerd")
def test_containerd_api_answers_on_its_socket(host) -> None:
    result = host.run("ctr version")
    assert result.rc == 0, result.stderr
    server = result.stdout.split("Server:", 1)
    assert len(server) == 2 and "Version:" in server[1], result.stdout


@pytest.mark.task("Install containerd")
def test_running_config_uses_systemd_cgroups_and_the_cni_plugins(host, settings: Settings) -> None:
    # The config as containerd itself parses it (in addition to the pull test's live proof).
    dump = host.check_output("containerd config dump")
    assert f"SystemdCgroup = {str(settings.bravo.systemd_cgroup).lower()}" in dump
    assert f'bin_dir = "{settings.bravo.cni_bin_dir}"' in dump
    assert f'snapshotter = "{settings.bravo.snapshotter}"' in dump


@pytest.mark.task("Configure snapshotter")
def test_configured_snapshotter_loads(remote, settings: Settings) -> None:
    plugins = remote.fact(containerd.ContainerdPlugins())
    assert containerd.snapshotter_status(plugins, settings.bravo.snapshotter) == "ok"


@pytest.mark.task("Configure snapshotter")
@pytest.mark.requires("devmapper")
def test_devmapper_snapshotter_loads_on_its_thin_pool(remote, host, settings: Settings) -> None:
    plugins = remote.fact(containerd.ContainerdPlugins())
    assert containerd.snapshotter_status(plugins, "devmapper") == "ok"
    pool = settings.bravo.devmapper.pool_name
    status = host.run(f"dmsetup status {shlex.quote(pool)}")
    assert status.rc == 0 and " thin-pool " in status.stdout, status.stdout + status.stderr
    assert host.service(containerd.THINPOOL_UNIT).is_enabled


@pytest.mark.task("Test OCI images")
@pytest.mark.full
def test_image_pulled_over_the_network_runs_to_its_marker(
    remote, settings: Settings, pull_case: PullCase
) -> None:
    namespace = settings.bravo.namespace
    quoted = shlex.quote(pull_case.reference)
    listed = remote.run(f"ctr -n {namespace} images ls -q name=={quoted}").stdout.split()
    assert pull_case.reference not in listed, "the image must not be in containerd before the pull"
    try:
        containerd.pull(
            remote,
            namespace,
            pull_case.reference,
            plain_http=pull_case.plain_http,
            snapshotter=settings.bravo.snapshotter,
            timeout=settings.bravo.pull_check.pull_timeout,
        )
        if pull_case.expected_digest:
            images = remote.run(f"ctr -n {namespace} images ls name=={quoted}").stdout
            assert pull_case.expected_digest in images, images
        container_id = f"hvsuite-pull-{secrets.token_hex(4)}"
        result = containerd.run_container(
            remote,
            namespace,
            pull_case.reference,
            container_id,
            pull_case.args,
            snapshotter=settings.bravo.snapshotter,
        )
        assert result.exit_code == 0, result.stderr
        assert result.stdout == pull_case.expected_output
    finally:
        containerd.remove_image(remote, namespace, pull_case.reference)


@pytest.mark.task("Flintlock runtime")
@pytest.mark.requires("upstream-artifacts")
@pytest.mark.requires("devmapper")
def test_flintlockd_runs_tls_only_on_containerd(host, settings: Settings, applied_flintlock) -> None:
    service = host.service(flintlock.UNIT)
    assert service.is_running and service.is_enabled
    exec_start = host.check_output(flintlock.EXEC_START)
    assert tls.flintlock_problems(exec_start, settings) == [], exec_start
    socket = flintlock.exec_flag(exec_start, "--containerd-socket")
    assert socket and host.file(socket).is_socket, f"containerd socket {socket} is not a socket"
    assert containerd.SERVICE + ".service" in host.check_output(f"systemctl show -p After {flintlock.UNIT}")


@pytest.mark.task("Flintlock runtime")
@pytest.mark.requires("upstream-artifacts")
@pytest.mark.requires("devmapper")
def test_grpc_port_presents_the_issued_certificate(
    host, settings: Settings, target, certs: tls.Paths, applied_flintlock
) -> None:
    ca_pem = host.file(certs.cert("ca")).content_string
    handshake = probes.tls_handshake(
        target.address, settings.base.grpc_port, server_name=target.address, ca_pem=ca_pem
    )
    assert handshake.sha256 == tls.fingerprint(tls.parse_cert(host.file(certs.cert("server")).content))
    assert handshake.alpn == "h2", "the gRPC port did not negotiate HTTP/2"
