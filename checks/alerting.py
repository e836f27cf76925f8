"""Alerting from the controller: Prometheus' rules and Alertmanagers, Alertmanager's API, a
webhook receiver the alert drill listens on, and the drill itself (Team Charlie-2).

The receiver is pytest-httpserver's server (werkzeug) on the controller, at the address the
host sees the controller's SSH connection come from: Alertmanager on the host posts there.
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import requests
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from apply.runner import Host


def prometheus_rules(base_url: str, *, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Every alerting rule Prometheus evaluates: name, health, state, last error."""
    response = requests.get(f"{base_url}/api/v1/rules", params={"type": "alert"}, timeout=timeout)
    response.raise_for_status()
    return [rule for group in response.json()["data"]["groups"] for rule in group["rules"]]


def prometheus_alertmanagers(base_url: str, *, timeout: float = 10.0) -> list[str]:
    """The Alertmanager URLs Prometheus sends its alerts to (the active ones)."""
    response = requests.get(f"{base_url}/api/v1/alertmanagers", timeout=timeout)
    response.raise_for_status()
    return [entry["url"] for entry in response.json()["data"]["activeAlertmanagers"]]


def alertmanager_status(base_url: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """Alertmanager's /api/v2/status (cluster, config, version)."""
    response = requests.get(f"{base_url}/api/v2/status", timeout=timeout)
    response.raise_for_status()
    return dict(response.json())


@dataclass(frozen=True)
class Notification:
    """One webhook post from Alertmanager, as the receiver got it."""

    received: float  # time.monotonic() on the controller
    body: dict[str, Any]

    def alerts(self, status: str, **labels: str) -> list[dict[str, Any]]:
        """The post's alerts of ``status`` ("firing", "resolved") carrying ``labels``."""
        return [
            alert
            for alert in self.body.get("alerts", [])
            if alert.get("status") == status
            and all(alert.get("labels", {}).get(key) == value for key, value in labels.items())
        ]


class Receiver:
    """What the webhook server received, in order; ``wait`` takes the first post that matches."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._posts: queue.Queue[Notification] = queue.Queue()
        self.seen: list[Notification] = []

    def handle(self, request: Request) -> Response:
        try:
            body = json.loads(request.get_data(as_text=True))
        except ValueError:
            return Response("not JSON", status=400)
        self._posts.put(Notification(time.monotonic(), body))
        return Response("", status=200)

    def wait(self, match: Callable[[Notification], bool], timeout: float) -> Notification | None:
        """The first post (from now on, or already queued) that ``match``es within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                post = self._posts.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            self.seen.append(post)
            if match(post):
                return post


@contextmanager
def webhook_receiver(bind: str, port: int, path: str) -> Iterator[Receiver]:
    """A webhook server on ``bind:port`` for the length of the block; posts to ``path`` are
    recorded."""
    server = HTTPServer(host=bind, port=port, threaded=True)
    receiver = Receiver(f"http://{bind}:{port}{path}")
    server.expect_request(path, method="POST").respond_with_handler(receiver.handle)
    server.start()
    try:
        yield receiver
    finally:
        server.clear()
        server.stop()


@dataclass
class DrillResult:
    """The alert drill's measured times (seconds since node_exporter stopped / started)."""

    host: str
    alert: str
    instance: str
    firing_seconds: float | None = None
    resolved_seconds: float | None = None
    firing_bound: float = 0.0
    resolved_bound: float = 0.0
    notifications: int = 0
    firing_payload: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def stop_exporter_drill(
    host: Host,
    unit: str,
    receiver: Receiver,
    *,
    alert: str,
    instance: str,
    firing_bound: float,
    resolved_bound: float,
) -> DrillResult:
    """Stop ``unit`` on ``host`` and time the ``alert`` for ``instance`` to the receiver, then
    start it again and time the resolved notification. The unit is started again whatever
    happens. Commands run with ``Host.run``: a drill is a measurement, not a change."""
    result = DrillResult(host.name, alert, instance, firing_bound=firing_bound, resolved_bound=resolved_bound)
    stopped = time.monotonic()
    try:
        host.run(f"systemctl stop {unit}")
        firing = receiver.wait(
            lambda post: bool(post.alerts("firing", alertname=alert, instance=instance)), firing_bound
        )
        if firing is not None:
            result.firing_seconds = round(firing.received - stopped, 1)
            result.firing_payload = firing.body
    finally:
        host.run(f"systemctl start {unit}")
    started = time.monotonic()
    if result.firing_seconds is not None:
        resolved = receiver.wait(
            lambda post: bool(post.alerts("resolved", alertname=alert, instance=instance)), resolved_bound
        )
        if resolved is not None:
            result.resolved_seconds = round(resolved.received - started, 1)
    result.notifications = len(receiver.seen)
    return result
