"""Team Foxtrot: the Kubernetes API behind a virtual IP.

On every control-plane host (the primary and the hosts with role ``control-plane``) HAProxy
serves the API on the endpoint's port, spread over every control plane's API server that
answers ``/readyz``, and a health endpoint; keepalived holds the virtual IP on one of them
while its HAProxy runs. Both are instances of their own (units ``hvsuite-vip-*``, their own
config files), beside the load balancer's keepalived and HAProxy of Team Echo-1.

Priorities follow the inventory: the control-plane hosts first, the primary last, so the
address stays off the host every other team works on while another can hold it. With
``nopreempt`` a holder keeps it until it fails: a host coming back does not take it back
before its own API server is up.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from apply import ops
from apply.api import Context, step
from apply.runner import ApplyError
from settings.base import Role
from steps.base.flintlock import DefaultRouteInterface
from steps.delta import kubernetes

TEMPLATES = Path(__file__).parent / "templates"

TEAM = "Foxtrot"
PACKAGES = ("keepalived", "haproxy")
KEEPALIVED = "hvsuite-vip-keepalived"
HAPROXY = "hvsuite-vip-haproxy"
KEEPALIVED_CONF = "/etc/keepalived/hvsuite-vip.conf"
HAPROXY_CONF = "/etc/haproxy/hvsuite-vip.cfg"
# The highest priority; each further host in the order gets 10 less.
TOP_PRIORITY = 150


def control_planes(ctx: Context) -> list[str]:
    """The control-plane hosts' addresses in keepalived's order: the hosts with role
    ``control-plane`` as the inventory lists them, then the primary."""
    return [*ctx.peers.get(Role.CONTROL_PLANE, ()), *ctx.peers.get(Role.PRIMARY, ())]


def priority(order: Sequence[str], address: str) -> int:
    """keepalived's priority for ``address``: the first host of ``order`` the highest."""
    return TOP_PRIORITY - 10 * order.index(address)


def keepalived_config(ctx: Context, order: Sequence[str], interface: str) -> str:
    foxtrot = ctx.settings.foxtrot
    return ops.render(
        TEMPLATES / "keepalived.conf.j2",
        {
            "virtual_ip": foxtrot.virtual_ip,
            "haproxy_unit": HAPROXY,
            "interface": interface,
            "router_id": foxtrot.vrrp_router_id,
            "priority": priority(order, ctx.address),
            "advert_interval": foxtrot.advert_interval,
            "address": ctx.address,
            "peers": [address for address in order if address != ctx.address],
        },
    )


def haproxy_config(ctx: Context, order: Sequence[str]) -> str:
    settings = ctx.settings
    foxtrot = settings.foxtrot
    return ops.render(
        TEMPLATES / "haproxy.cfg.j2",
        {
            "api_port": settings.port(TEAM, foxtrot.api_port),
            "health_port": settings.port(TEAM, foxtrot.health_port),
            "backend_port": settings.port("Delta", kubernetes.API_PORT_NAME),
            "servers": [(f"apiserver-{address.replace('.', '-')}", address) for address in order],
        },
    )


@step("Virtual IP: keepalived and HAProxy")
def apply(ctx: Context) -> None:
    """HAProxy and keepalived for the virtual IP on the control-plane host of ``ctx``."""
    host, foxtrot = ctx.host, ctx.settings.foxtrot
    order = control_planes(ctx)
    if ctx.address not in order:
        raise ApplyError(f"[{host.name}] {ctx.address} is not a control-plane host of this run's fleet")
    interface = foxtrot.interface or host.fact(DefaultRouteInterface())
    if not interface:
        raise ApplyError(f"[{host.name}] no IPv4 default route: set foxtrot.interface")
    keepalived_text = keepalived_config(ctx, order, interface)
    haproxy_text = haproxy_config(ctx, order)
    ops.packages(host, PACKAGES)
    haproxy = ops.file(host, HAPROXY_CONF, haproxy_text, validate="haproxy -c -q -f {path}")
    haproxy_unit = ops.template(
        host,
        f"/etc/systemd/system/{HAPROXY}.service",
        TEMPLATES / "haproxy.service.j2",
        {"name": HAPROXY, "config": HAPROXY_CONF},
    )
    keepalived = ops.file(host, KEEPALIVED_CONF, keepalived_text, mode="0640")
    keepalived_unit = ops.template(
        host,
        f"/etc/systemd/system/{KEEPALIVED}.service",
        TEMPLATES / "keepalived.service.j2",
        {"name": KEEPALIVED, "config": KEEPALIVED_CONF, "haproxy_unit": f"{HAPROXY}.service"},
    )
    ops.daemon_reload(host, force=haproxy_unit.changed or keepalived_unit.changed)
    ops.service(host, HAPROXY, restart=haproxy_unit.changed, reload=haproxy.changed)
    ops.service(host, KEEPALIVED, restart=keepalived_unit.changed, reload=keepalived.changed)
