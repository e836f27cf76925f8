"""Team Delta's steps as data: which Kubernetes, what the node gets, what kubeadm is asked to
do, and what leaves the host for the operator. No SSH (see apply.testing)."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from apply import ops
from apply.extensions import hooks
from apply.facts import FileInfo, ServiceState
from apply.testing import FakeConnection, fake_context, fake_host
from recipes import kubernetes as kubernetes_recipe
from settings.loader import load_settings
from settings.model import Settings
from steps.charlie import prometheus
from steps.delta import api_metrics, control_plane, kubernetes, pod_network
from steps.delta.settings import DeltaSettings, KubernetesRelease

SETTINGS = load_settings()
SCRATCH = SETTINGS.effective_profile("scratch")
NOT_FOUND = "LoadState=not-found\nActiveState=inactive\nUnitFileState=\nNeedDaemonReload=no\n"
PRODUCTION = SETTINGS.effective_profile("production")


def _with_release(version: str) -> Settings:
    return SETTINGS.model_copy(update={"delta": DeltaSettings(release=KubernetesRelease(version=version))})


def test_scratch_builds_kubernetes_by_recipe_with_its_own_images() -> None:
    dist = kubernetes.distribution(SETTINGS, SCRATCH)
    assert (dist.source, dist.version) == ("recipe", "1.20.2")
    assert dist.pause_image == "localhost/hvsuite-k8s/pause:3.2"
    assert not dist.has_crictl and not dist.has_coredns_image
    assert SETTINGS.delta.resolved_etcd(SCRATCH) == "external"


def test_a_release_names_its_pause_image_and_uses_stacked_etcd() -> None:
    settings = _with_release("1.34.2")
    dist = kubernetes.distribution(settings, PRODUCTION)
    assert (dist.source, dist.pause_image) == ("release", "registry.k8s.io/pause:3.10.1")
    assert settings.delta.resolved_etcd(PRODUCTION) == "stacked"


def test_a_release_of_an_unknown_minor_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"1\.29\.1.*known: 1\.31"):
        kubernetes.distribution(_with_release("1.29.1"), PRODUCTION)


def test_the_recipe_key_follows_what_it_builds_from() -> None:
    recipe = kubernetes_recipe.recipe(SETTINGS)
    assert recipe.entry_name.startswith("kubernetes-1.20.2-")
    assert kubernetes_recipe.SOURCE_PACKAGE in recipe.inputs["builder"]
    # The vendor fix is part of the recipe, so changing it changes the key.
    assert "modern-go/reflect2" in recipe.inputs["builder"]
    other = SETTINGS.model_copy(
        update={"scratch": SETTINGS.scratch.model_copy(update={"mirror": "http://mirror.example/debian"})}
    )
    assert kubernetes_recipe.recipe(other).key != recipe.key


def test_scratch_prepares_the_recipe_in_the_background() -> None:
    job = kubernetes.prepare(SETTINGS, SCRATCH, None)
    assert job is not None
    label, run = job
    assert "recipe kubernetes-1.20.2-" in label and callable(run)


def test_kubelet_waits_for_its_tunables_held_inside_a_shared_kernel_host() -> None:
    shared = ops.render(
        kubernetes.TEMPLATES / "kubelet.service.j2",
        {"bin_dir": "/usr/local/bin", "sysctl_guard": "hvsuite-kubelet-sysctls.service"},
    )
    assert "Requires=hvsuite-kubelet-sysctls.service" in shared
    own = ops.render(
        kubernetes.TEMPLATES / "kubelet.service.j2", {"bin_dir": "/usr/local/bin", "sysctl_guard": None}
    )
    assert "hvsuite-kubelet-sysctls" not in own
    script = ops.render(
        kubernetes.TEMPLATES / "kubelet-sysctls.sh.j2", {"tunables": kubernetes.KUBELET_TUNABLES}
    )
    held = re.findall(r"^hold (\S+) (\S+)$", script, re.MULTILINE)
    assert dict(held) == kubernetes.KUBELET_TUNABLES
    assert 'mount --bind "$file" "$entry"' in script


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_the_tunables_script_is_valid_shell(tmp_path: Path) -> None:
    script = tmp_path / "guard.sh"
    script.write_text(
        ops.render(kubernetes.TEMPLATES / "kubelet-sysctls.sh.j2", {"tunables": kubernetes.KUBELET_TUNABLES})
    )
    assert subprocess.run(["sh", "-n", str(script)], check=False).returncode == 0


def test_prometheus_scrapes_the_api_server_once_delta_gave_it_credentials() -> None:
    # Delta's contribution to Charlie's extension point: nothing before the credentials exist.
    bare = FakeConnection()
    bare.set_fact(FileInfo(api_metrics.TOKEN), "")
    assert api_metrics.contributed_jobs(fake_context(fake_host(bare), SETTINGS)) == []
    ready = FakeConnection(files={api_metrics.SERVER: b"10.0.0.5:6443\n"})
    ready.set_fact(FileInfo(api_metrics.TOKEN), "regular file|root|prometheus|640|1")
    ready.respond("hostname", (0, "hv\n", ""))
    ctx = fake_context(fake_host(ready), SETTINGS)
    assert hooks().prometheus_scrape_jobs(ctx=ctx) == [[api_metrics.scrape_job("10.0.0.5:6443")]]
    plain = prometheus.render_config(
        SETTINGS.charlie, prometheus_port=9095, node_exporter_port=9100, hostname="hv"
    )
    assert "kubernetes-apiserver" not in plain
    text = prometheus.render_config(
        SETTINGS.charlie,
        prometheus_port=9095,
        node_exporter_port=9100,
        hostname="hv",
        contributed=prometheus.Contributions.collect(ctx),
    )
    job = next(j for j in yaml.safe_load(text)["scrape_configs"] if j["job_name"] == "kubernetes-apiserver")
    assert job["scheme"] == "https"
    assert job["authorization"] == {"credentials_file": api_metrics.TOKEN}
    assert job["tls_config"] == {"ca_file": api_metrics.CA}
    assert job["static_configs"] == [{"targets": ["10.0.0.5:6443"]}]


KEY = "-----BEGIN EC PRIVATE KEY-----\nSECRETKEYMATERIAL\n-----END EC PRIVATE KEY-----\n"


def _admin_conf() -> bytes:
    key = KEY
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "hvsuite", "cluster": {"server": "https://192.0.2.10:6443"}}],
        "users": [
            {
                "name": "kubernetes-admin",
                "user": {
                    "client-certificate-data": base64.b64encode(b"CERT").decode(),
                    "client-key-data": base64.b64encode(key.encode()).decode(),
                },
            }
        ],
    }
    return yaml.safe_dump(config).encode()


def test_the_operators_kubeconfig_is_private_and_its_keys_are_redacted(tmp_path: Path) -> None:
    conn = FakeConnection(files={control_plane.ADMIN_CONF: _admin_conf()})
    host = fake_host(conn, name="hv1")
    settings = SETTINGS.model_copy(
        update={"delta": DeltaSettings(kubeconfig=str(tmp_path / "kube" / "{host}.conf"))}
    )
    path = control_plane.fetch_kubeconfig(fake_context(host, settings))
    assert path == tmp_path / "kube" / "hv1.conf"
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes() == _admin_conf()
    assert "SECRETKEYMATERIAL" not in host.redactor.redact(f"key: {KEY}")
    encoded = yaml.safe_load(_admin_conf())["users"][0]["user"]["client-key-data"]
    assert encoded not in host.redactor.redact(f"data: {encoded}")


def test_a_host_without_a_cluster_has_no_kubeconfig_to_fetch(tmp_path: Path) -> None:
    host = fake_host(FakeConnection())
    settings = SETTINGS.model_copy(update={"delta": DeltaSettings(kubeconfig=str(tmp_path / "k.conf"))})
    with pytest.raises(Exception, match="not initialised"):
        control_plane.fetch_kubeconfig(fake_context(host, settings))
    assert not (tmp_path / "k.conf").exists()


def test_kubeadm_init_runs_only_where_no_cluster_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = FakeConnection()
    conn.respond("hostname", (0, "hv1\n", ""))
    conn.set_fact(ServiceState("kubelet"), NOT_FOUND)
    host = fake_host(conn, mode="check")
    ctx = fake_context(host, SETTINGS, profile="scratch")
    control_plane.apply(ctx)
    init = [c for c in conn.commands if "kubeadm init" in c]
    assert not init, "check mode ran kubeadm"
    would = [r.op for r in host.changes]
    assert "command kubeadm init" in would

    conn = FakeConnection(files={control_plane.ADMIN_CONF: b"x"})
    conn.respond("hostname", (0, "hv1\n", ""))
    conn.set_fact(FileInfo(control_plane.ADMIN_CONF), "regular file|root|root|600|1")
    conn.set_fact(ServiceState("kubelet"), NOT_FOUND)
    conn.set_fact(ServiceState("prometheus"), NOT_FOUND)
    conn.respond(re.compile(r".*jsonpath=\{\.spec\.podCIDR\}.*"), (0, "10.244.0.0/24", ""))
    host = fake_host(conn, mode="check")
    control_plane.apply(fake_context(host, SETTINGS, profile="scratch"))
    would = [r.op for r in host.changes]
    assert "command kubeadm init" not in would
    # A healthy cluster is still compared: here it has no pod network, so Delta's bootstrap.
    assert f"file {SETTINGS.bravo.cni_conf_dir}/{pod_network.BOOTSTRAP}" in would


def test_the_pinned_release_names_kubeadms_pause_image_for_its_minor() -> None:
    dist = kubernetes.distribution(_with_release("1.36.4"), PRODUCTION)
    assert (dist.version, dist.pause_image) == ("1.36.4", "registry.k8s.io/pause:3.10.2")
