"""Team Delta: etcd outside kubeadm's static pods (``delta.etcd = "external"``), from the OS
archive (Debian's ``etcd-server``), serving clients only over TLS with client certificates.

Its certificates are kubeadm's etcd PKI (an etcd CA apart from the cluster CA, so a client
certificate of the cluster is no key to etcd): ``kubeadm init phase certs`` issues the etcd
CA, the server and peer certificates and the API server's etcd client certificate. Those
phases skip themselves when the config says external etcd, so they run from a config that
differs only in that (``certs_config``).

The package's first start must not run on its default config (plain HTTP, member "default"):
a systemd drop-in written before the package is installed points etcd at the suite's
environment file and makes that file's existence a start condition.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from apply import ops
from apply.api import Context, step
from apply.extensions import hooks
from steps.delta import kubeadm_config, kubernetes

TEMPLATES = Path(__file__).parent / "templates"


SERVICE = "etcd"
PKI = "/etc/kubernetes/pki"
CA = f"{PKI}/etcd/ca.crt"
SERVER_CERT = f"{PKI}/etcd/server.crt"
SERVER_KEY = f"{PKI}/etcd/server.key"
PEER_CERT = f"{PKI}/etcd/peer.crt"
PEER_KEY = f"{PKI}/etcd/peer.key"
CLIENT_CERT = f"{PKI}/apiserver-etcd-client.crt"
CLIENT_KEY = f"{PKI}/apiserver-etcd-client.key"
ENV_FILE = "/etc/etcd/hvsuite.env"
DATA_DIR = "/var/lib/etcd/hvsuite"
DROPIN = f"/etc/systemd/system/{SERVICE}.service.d/hvsuite.conf"
CLIENT_PORT = 2379
PEER_PORT = 2380
CLIENT_URL = f"https://127.0.0.1:{CLIENT_PORT}"
PEER_URL = f"https://127.0.0.1:{PEER_PORT}"
# kubeadm's certificate phases for etcd and the file each one writes.
CERT_PHASES = {
    "etcd-ca": CA,
    "etcd-server": SERVER_CERT,
    "etcd-peer": PEER_CERT,
    "apiserver-etcd-client": CLIENT_CERT,
}
CERTS_CONFIG = "/etc/kubernetes/hvsuite-etcd-certs.yaml"


def peer_url(address: str) -> str:
    return f"https://{address}:{PEER_PORT}"


def client_url(address: str) -> str:
    return f"https://{address}:{CLIENT_PORT}"


def environment(member: str, address: str | None = None) -> dict[str, str]:
    """etcd's settings (its ETCD_* environment): a one-member cluster on loopback, or, with
    ``address``, a member that serves peers on the host's address and clients there and on
    loopback (the API server keeps using loopback). The initial cluster is this member
    alone: a member that joins an existing cluster is told so by the team that adds it (etcd
    reads the initial-cluster settings only when its data directory is new)."""
    peer = peer_url(address) if address else PEER_URL
    clients = f"{CLIENT_URL},{client_url(address)}" if address else CLIENT_URL
    return {
        "ETCD_NAME": member,
        "ETCD_DATA_DIR": DATA_DIR,
        "ETCD_LISTEN_CLIENT_URLS": clients,
        "ETCD_ADVERTISE_CLIENT_URLS": client_url(address) if address else CLIENT_URL,
        "ETCD_LISTEN_PEER_URLS": peer,
        "ETCD_INITIAL_ADVERTISE_PEER_URLS": peer,
        "ETCD_INITIAL_CLUSTER": f"{member}={peer}",
        "ETCD_INITIAL_CLUSTER_STATE": "new",
        "ETCD_CERT_FILE": SERVER_CERT,
        "ETCD_KEY_FILE": SERVER_KEY,
        "ETCD_TRUSTED_CA_FILE": CA,
        "ETCD_CLIENT_CERT_AUTH": "true",
        "ETCD_PEER_CERT_FILE": PEER_CERT,
        "ETCD_PEER_KEY_FILE": PEER_KEY,
        "ETCD_PEER_TRUSTED_CA_FILE": CA,
        "ETCD_PEER_CLIENT_CERT_AUTH": "true",
        # Metrics without TLS on loopback only, for a local scrape.
        "ETCD_LISTEN_METRICS_URLS": "http://127.0.0.1:2381",
    }


def health_command() -> str:
    return (
        f"ETCDCTL_API=3 etcdctl --endpoints={CLIENT_URL} --cacert={CA} "
        f"--cert={CLIENT_CERT} --key={CLIENT_KEY} endpoint health"
    )


@step("etcd (external, TLS)")
def apply(ctx: Context) -> None:
    """etcd-server installed and serving TLS on loopback with kubeadm's etcd certificates."""
    host, delta = ctx.host, ctx.settings.delta
    spec = kubernetes.cluster_spec(ctx)
    # Before the package: its first start is skipped until the suite's environment exists.
    ops.directory(host, f"/etc/systemd/system/{SERVICE}.service.d")
    dropin = ops.template(host, DROPIN, TEMPLATES / "etcd.service.conf.j2", {"env_file": ENV_FILE})
    ops.daemon_reload(host, force=dropin.changed)
    ops.packages(host, delta.etcd_packages)
    ops.file(host, CERTS_CONFIG, kubeadm_config.render(replace(spec, etcd="stacked")), mode="0600")
    for phase, cert in CERT_PHASES.items():
        # kubeadm keeps a valid certificate on disk; `creates` skips the call then.
        ops.command(
            host,
            f"kubeadm init phase certs {phase} --config {CERTS_CONFIG}",
            creates=cert,
            name=f"kubeadm init phase certs {phase}",
        )
    for key in (SERVER_KEY, PEER_KEY):
        ops.metadata(host, key, group="etcd", mode="0640")
    ops.directory(host, "/etc/etcd")
    address = ctx.address if hooks().etcd_clustered(settings=ctx.settings) else None
    env = ops.file(
        host,
        ENV_FILE,
        "".join(f"{key}={value}\n" for key, value in environment(spec.node_name, address).items()),
    )
    ops.service(host, SERVICE, enabled=True, running=True, restart=env.changed or dropin.changed)
