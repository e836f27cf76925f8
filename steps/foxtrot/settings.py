"""The settings of Team Foxtrot (the config's [foxtrot] section): the control planes' virtual
IP, how it fails over, and the bounds the failover drills are held to."""

from __future__ import annotations

import ipaddress
from typing import Any, ClassVar

from pydantic import Field, field_validator

from settings.base import TeamSettings


class FoxtrotSettings(TeamSettings):
    """Team Foxtrot: more control planes and a worker behind a virtual IP."""

    section: ClassVar[str] = "foxtrot"

    # The address keepalived moves between the control-plane hosts (VRRP); HAProxy on each of
    # them serves the Kubernetes API there. It must be free on the hosts' network: no default.
    virtual_ip: str | None = None
    # [[ports]] rules (team Foxtrot) by name: HAProxy's API frontend, its health endpoint, and
    # the hostPort of the drills' marker pod on a worker.
    api_port: str = "kube-apiserver-vip"
    health_port: str = "foxtrot-health"
    marker_port: str = "failover-marker"
    # Every VRRP instance on one network needs its own id (Echo-1's load balancer has one too).
    vrrp_router_id: int = Field(52, ge=1, le=255)
    # keepalived's advertisement interval: a backup takes over 3 intervals (plus skew) after
    # the holder's adverts stop.
    advert_interval: int = Field(1, ge=1, le=10)
    # The interface keepalived puts the address on; None: the host's default-route interface.
    interface: str | None = None
    # The drills' bounds, in seconds: the longest the API may go unanswered through the
    # virtual IP when the holder's API server, keepalived or whole server stops gracefully,
    # and when the holder dies without a word.
    graceful_gap_seconds: float = Field(2.0, gt=0, le=60)
    hard_gap_seconds: float = Field(5.0, gt=0, le=120)
    # How often the drills poll the API through the virtual IP.
    poll_seconds: float = Field(0.2, gt=0, le=5)
    # How long a stopped host may take to be a healthy member again once it is back.
    rejoin_timeout: float = Field(300.0, gt=0)

    @field_validator("virtual_ip")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.IPv4Address(value))
        except ValueError:
            raise ValueError(
                f'foxtrot.virtual_ip {value!r} is not an IPv4 address (e.g. virtual_ip = "203.0.113.20")'
            ) from None

    def require_virtual_ip(self) -> str:
        if self.virtual_ip is None:
            raise ValueError(
                "foxtrot.virtual_ip is not set: name a free address on the hosts' network, e.g. "
                '[foxtrot] virtual_ip = "203.0.113.20"'
            )
        return self.virtual_ip

    def endpoint(self, port: int) -> str:
        return f"{self.require_virtual_ip()}:{port}"

    def problems_with(self, config: Any) -> list[str]:
        problems = []
        if self.virtual_ip is None:
            return problems
        vip = ipaddress.ip_address(self.virtual_ip)
        subnet = ipaddress.ip_network(config.scratch.subnet)
        kept = [ipaddress.ip_network(net) for net in config.scratch.keep_free]
        if vip in subnet and not any(vip in net for net in kept):
            problems.append(
                f"foxtrot.virtual_ip {vip} lies in scratch.subnet {subnet}, where scratch servers get "
                f'addresses: add it to scratch.keep_free (keep_free = ["{vip}/32"])'
            )
        echo1 = getattr(config, "echo1", None)
        if echo1 is not None:
            pool = [ipaddress.ip_network(net) for net in echo1.load_balancer.pool]
            if any(vip in net for net in pool):
                problems.append(
                    f"foxtrot.virtual_ip {vip} lies in echo1.load_balancer.pool: the load balancer would "
                    "hand it to a Service; choose an address outside the pool"
                )
            if echo1.load_balancer.vrrp_router_id == self.vrrp_router_id:
                problems.append(
                    f"foxtrot.vrrp_router_id {self.vrrp_router_id} is echo1.load_balancer.vrrp_router_id "
                    "too: every VRRP instance on one network needs its own id; choose another"
                )
        if self.graceful_gap_seconds > self.hard_gap_seconds:
            problems.append(
                "foxtrot.graceful_gap_seconds exceeds foxtrot.hard_gap_seconds: a graceful failover "
                "is never slower than a hard one; lower it"
            )
        return problems
