"""Team Echo-1: addresses for Services of type LoadBalancer, from the configured pool.

"keepalived-haproxy" (Debian's packages, on the host): keepalived holds the pool's addresses
on the host's interface while HAProxy runs; ``hvsuite-lb-sync`` (a small allocator with its
own ServiceAccount) gives each such Service an address, an HAProxy TCP frontend on it that
forwards to the Service's ClusterIP, and the address in the Service's status. Only ports
the config declares for the load balancer are served, so the firewall (derived from the
same declarations) and Alpha's port scan keep holding.

"metallb": the pinned MetalLB manifest, an IPAddressPool of the pool and an L2Advertisement.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from apply import ops
from apply.api import Context, step
from apply.facts import Fact
from apply.runner import ApplyError
from steps.base.flintlock import DefaultRouteInterface
from steps.delta import kubectl, kubernetes
from steps.delta.kubectl import account_token, apply_manifest, pinned_documents, wait_rollout

TEMPLATES = Path(__file__).parent / "templates"


PACKAGES = ("keepalived", "haproxy")
HAPROXY_DIR = "/etc/haproxy/hvsuite.d"
HAPROXY_BASE = f"{HAPROXY_DIR}/00-hvsuite.cfg"
HAPROXY_SERVICES = f"{HAPROXY_DIR}/50-services.cfg"
HAPROXY_DROPIN = "/etc/systemd/system/haproxy.service.d/hvsuite.conf"
KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
STATE_DIR = "/etc/hvsuite/lb"
SYNC_PROGRAM = "/usr/local/lib/hvsuite/hvsuite-lb-sync"
SYNC_UNIT = "hvsuite-lb-sync"
ACCOUNT = "hvsuite-load-balancer"
SYSCTL_FILE = "/etc/sysctl.d/90-hvsuite-load-balancer.conf"
METALLB_NAMESPACE = "metallb-system"
# What the allocator may do through the API, and nothing more.
ACCOUNT_RULES = [
    {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["services/status"], "verbs": ["get", "patch", "update"]},
]


def _pool(ctx: Context) -> list[str]:
    balancer = ctx.settings.echo1.load_balancer
    if not balancer.pool:
        raise ApplyError(
            f"[{ctx.host.name}] echo1.load_balancer.pool is empty: name the addresses Services of type "
            'LoadBalancer may get, e.g. pool = ["203.0.113.10/32"] (the server\'s additional IPs)'
        )
    return balancer.addresses()


def sync_config(ctx: Context) -> str:
    balancer, settings = ctx.settings.echo1.load_balancer, ctx.settings
    return (
        json.dumps(
            {
                "api": f"https://{ctx.address}:{settings.port('Delta', kubernetes.API_PORT_NAME)}",
                "ca": kubectl.CA_CERT,
                "token": f"{STATE_DIR}/token",
                "pool": _pool(ctx),
                "ports": sorted(settings.port("Echo-1", name) for name in balancer.ports),
                "haproxy_services": HAPROXY_SERVICES,
                "interval": balancer.sync_seconds,
            },
            indent=2,
        )
        + "\n"
    )


@step("Load balancer")
def apply(ctx: Context) -> None:
    if ctx.settings.echo1.load_balancer.resolved_implementation(ctx.profile) == "metallb":
        _metallb(ctx)
    else:
        _keepalived_haproxy(ctx)


def _keepalived_haproxy(ctx: Context) -> None:
    host, balancer = ctx.host, ctx.settings.echo1.load_balancer
    # Bad input (an empty pool, an undeclared port) stops the step before any change.
    allocator_config = sync_config(ctx)
    addresses = balancer.addresses()
    interface = balancer.interface or host.fact(DefaultRouteInterface())
    if not interface:
        raise ApplyError(f"[{host.name}] no IPv4 default route: set echo1.load_balancer.interface")
    # HAProxy binds pool addresses before (or while) keepalived holds them.
    ops.sysctls(host, {"net.ipv4.ip_nonlocal_bind": "1"}, persist_file=SYSCTL_FILE)
    ops.packages(host, PACKAGES)

    ops.directory(host, HAPROXY_DIR, mode="0755")
    base = ops.template(host, HAPROXY_BASE, TEMPLATES / "haproxy-hvsuite.cfg.j2")
    # The allocator owns the frontends; the step only makes sure the file exists.
    ops.command(host, f"touch {HAPROXY_SERVICES}", creates=HAPROXY_SERVICES, name=f"file {HAPROXY_SERVICES}")
    ops.directory(host, HAPROXY_DROPIN.rsplit("/", 1)[0], mode="0755")
    dropin = ops.file(host, HAPROXY_DROPIN, f"[Service]\nEnvironment=CONFIG={HAPROXY_DIR}\n")
    if dropin.changed:
        ops.daemon_reload(host, units=["haproxy"])
    ops.service(host, "haproxy", enabled=True, running=True, restart=dropin.changed, reload=base.changed)

    keepalived = ops.template(
        host,
        KEEPALIVED_CONF,
        TEMPLATES / "keepalived.conf.j2",
        {"interface": interface, "router_id": balancer.vrrp_router_id, "addresses": addresses},
    )
    ops.service(host, "keepalived", enabled=True, running=True, reload=keepalived.changed)

    ops.directory(host, STATE_DIR, mode="0700")
    account_token(host, ACCOUNT, ACCOUNT_RULES, f"{STATE_DIR}/token")
    config = ops.file(host, f"{STATE_DIR}/config.json", allocator_config, mode="0600")
    ops.directory(host, "/usr/local/lib/hvsuite", mode="0755")
    program = ops.file(host, SYNC_PROGRAM, (TEMPLATES / "hvsuite-lb-sync.py").read_text(), mode="0755")
    unit = ops.template(
        host,
        f"/etc/systemd/system/{SYNC_UNIT}.service",
        TEMPLATES / "hvsuite-lb-sync.service.j2",
        {"program": SYNC_PROGRAM},
    )
    if unit.changed:
        ops.daemon_reload(host, units=[SYNC_UNIT])
    restart = config.changed or program.changed or unit.changed
    ops.service(host, SYNC_UNIT, enabled=True, running=True, restart=restart)


def _metallb(ctx: Context) -> None:
    host, balancer = ctx.host, ctx.settings.echo1.load_balancer
    apply_manifest(host, "metallb", pinned_documents(ctx, balancer.metallb_manifest))
    if host.mode == "apply":
        wait_rollout(host, METALLB_NAMESPACE, "deployment/controller", ctx.settings.delta.ready_timeout)
    apply_manifest(
        host,
        "metallb-pool",
        [
            {
                "apiVersion": "metallb.io/v1beta1",
                "kind": "IPAddressPool",
                "metadata": {"name": "hvsuite", "namespace": METALLB_NAMESPACE},
                "spec": {"addresses": list(balancer.pool)},
            },
            {
                "apiVersion": "metallb.io/v1beta1",
                "kind": "L2Advertisement",
                "metadata": {"name": "hvsuite", "namespace": METALLB_NAMESPACE},
                "spec": {"ipAddressPools": ["hvsuite"]},
            },
        ],
    )


@dataclass(frozen=True)
class HostAddresses(Fact[set[str]]):
    """The IPv4 addresses the host holds (keepalived's among them)."""

    @property
    def command(self) -> str:
        return "ip -o -4 addr show"

    def parse(self, output: str) -> set[str]:
        return {fields[3].split("/")[0] for fields in map(str.split, output.splitlines()) if len(fields) > 3}
