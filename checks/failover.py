"""Failure drills: something answers, is polled from the controller while a fault is made,
and the longest silence is measured.

:class:`Poller` asks a probe (an HTTPS GET of the API's ``/readyz`` through the virtual IP, a
GET of a marker) every ``interval`` seconds in a thread and keeps each answer's time. The
gap of a window is what a client saw: the time from the last good answer before a failed one
to the next good answer, the longest such span in the window (0 when nothing failed).
"""

from __future__ import annotations

import http.client
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Poller:
    probe: Callable[[], bool]
    interval: float
    answers: list[tuple[float, bool]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    @classmethod
    @contextmanager
    def running(cls, probe: Callable[[], bool], interval: float) -> Iterator[Poller]:
        poller = cls(probe, interval)
        thread = threading.Thread(target=poller._loop, name="hvsuite-poller", daemon=True)
        thread.start()
        try:
            yield poller
        finally:
            poller._stop.set()
            thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                ok = self.probe()
            except Exception:  # any failure to answer is a failed poll
                ok = False
            self.answers.append((started, ok))
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def window(self, start: float, end: float) -> list[tuple[float, bool]]:
        return [(t, ok) for t, ok in list(self.answers) if start <= t <= end]

    def gap(self, start: float, end: float) -> float:
        return longest_gap(self.window(start, end))

    def failures(self, start: float, end: float) -> int:
        return sum(1 for _, ok in self.window(start, end) if not ok)


def longest_gap(answers: list[tuple[float, bool]]) -> float:
    """The longest span from a good answer, over failed ones, to the next good answer. A
    window that ends while still failing counts up to its last answer."""
    longest, last_good, failing = 0.0, None, False
    for at, ok in answers:
        if ok:
            if failing and last_good is not None:
                longest = max(longest, at - last_good)
            last_good, failing = at, False
        else:
            failing = True
    if failing and last_good is not None and answers:
        longest = max(longest, answers[-1][0] - last_good)
    return round(longest, 3)


def https_ok(host: str, port: int, path: str, *, ca_file: str, timeout: float = 1.0) -> bool:
    """A GET over a new TLS connection (the server's certificate checked against ``ca_file``)
    answered 200; False for any other answer, a refusal or a time-out."""
    context = ssl.create_default_context(cafile=ca_file)
    connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def http_body(host: str, port: int, path: str, *, timeout: float = 1.0) -> str | None:
    """The body of a GET answered 200, or None (another answer, a refusal, a time-out)."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.read().decode(errors="replace") if response.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.2) -> float | None:
    """Seconds until ``condition()`` held, or None when it did not within ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if condition():
                return round(time.monotonic() - start, 3)
        except Exception:  # not yet
            pass
        time.sleep(interval)
    return None


@dataclass(frozen=True)
class Drill:
    """One fault made on the host holding the virtual IP (``fault(holder)``), held for
    ``hold`` seconds, then undone (``restore(holder)`` returns how long the host took to be
    healthy again, or None if it did not within its bound)."""

    name: str
    fault: Callable[[str], None]
    restore: Callable[[str], float | None]
    bound: float
    hold: float = 5.0


@dataclass(frozen=True)
class DrillResult:
    name: str
    holder: str
    new_holder: str | None
    bound: float
    api_gap: float
    api_failed_polls: int
    api_polls: int
    marker_failed_polls: int
    quorum_kept: bool
    recovered_seconds: float | None

    def row(self) -> str:
        recovered = "never" if self.recovered_seconds is None else f"{self.recovered_seconds:.1f} s"
        return (
            f"| {self.name} | {self.holder} | {self.new_holder or '-'} | {self.api_gap:.2f} s "
            f"(bound {self.bound:g} s) | {self.api_failed_polls}/{self.api_polls} | "
            f"{self.marker_failed_polls} | {'yes' if self.quorum_kept else 'NO'} | {recovered} |"
        )


TABLE_HEAD = (
    "| drill | VIP holder | new holder | API gap through the VIP | failed API polls | "
    "failed marker polls | etcd quorum | back healthy after |\n|---|---|---|---|---|---|---|---|"
)


def run_drill(
    drill: Drill,
    *,
    api: Poller,
    marker: Poller,
    holder: Callable[[str | None], str | None],
    quorum: Callable[[], bool],
) -> DrillResult:
    """Make ``drill``'s fault on the current holder of the virtual IP, prove etcd still
    takes writes, restore, and measure what the pollers saw from fault to recovery."""
    before = holder(None)
    if before is None:
        raise AssertionError(f"drill {drill.name}: no host holds the virtual IP before the fault")
    start = time.monotonic()
    try:
        drill.fault(before)
        time.sleep(drill.hold)
        after = holder(before)
        quorum_kept = quorum()
    finally:
        # A drill that went wrong still gives the host back.
        recovered = drill.restore(before)
    time.sleep(1.0)
    end = time.monotonic()
    return DrillResult(
        drill.name,
        before,
        after if after != before else None,
        drill.bound,
        api.gap(start, end),
        api.failures(start, end),
        len(api.window(start, end)),
        marker.failures(start, end),
        quorum_kept,
        recovered,
    )


@dataclass
class Node:
    """A control-plane host as the drills handle it: ``run`` a shell command on it (returns
    whether it succeeded; False when the host does not answer), and, where the suite can
    switch the machine itself, ``power`` (stop, kill, start)."""

    name: str
    address: str
    run: Callable[[str], bool]
    power: Power | None = None


@dataclass(frozen=True)
class Power:
    stop: Callable[[], None]
    kill: Callable[[], None]
    start: Callable[[], None]


def holder_of(nodes: list[Node], address: str, *, skip: str | None = None) -> str | None:
    """The node holding ``address`` (asked of every node but ``skip``)."""
    for node in nodes:
        if node.name != skip and node.run(f"ip -o -4 addr show | grep -qF ' {address}/'"):
            return node.name
    return None


# The drills, in the order they run; the last two need power over the hosts.
DRILL_NAMES = ("api-server stopped", "keepalived stopped", "server stopped", "server killed")


@dataclass
class ControlPlaneDrills:
    """The failover drills of a control plane behind a virtual IP, on the host holding it:
    its API server stopped (the static pod's manifest moved away), its keepalived stopped,
    and, where the suite can switch hosts itself, the whole server stopped and killed. The
    primary (last of ``nodes``) is never faulted: every other team works on it."""

    nodes: list[Node]
    virtual_ip: str
    api: tuple[str, int]  # the API through the virtual IP
    api_server_port: int
    ca_file: str
    keepalived_unit: str
    # etcdctl on the primary with client credentials; None where etcd is kubeadm's (stacked).
    etcdctl: str | None
    graceful_bound: float
    hard_bound: float
    rejoin_timeout: float
    manifest: str = "/etc/kubernetes/manifests/kube-apiserver.yaml"
    parked: str = "/etc/kubernetes/hvsuite-drill-kube-apiserver.yaml"

    @property
    def primary(self) -> Node:
        return self.nodes[-1]

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def holder(self, skip: str | None) -> str | None:
        found = holder_of(self.nodes, self.virtual_ip, skip=skip)
        if found == self.primary.name:
            raise AssertionError("the virtual IP is on the primary: the drills fault only the other hosts")
        return found

    def quorum(self) -> bool:
        """etcd takes a write (or, for kubeadm's etcd, the API reads from it)."""
        if self.etcdctl:
            return self.primary.run(f"{self.etcdctl} put hvsuite/foxtrot/drill {time.time_ns()} >/dev/null")
        return https_ok(*self.api, "/readyz/etcd", ca_file=self.ca_file, timeout=5)

    def api_server_ready(self, name: str) -> bool:
        return https_ok(self.node(name).address, self.api_server_port, "/readyz", ca_file=self.ca_file)

    def healthy(self, name: str) -> bool:
        node = self.node(name)
        etcd_ok = not self.etcdctl or self.primary.run(
            f"{self.etcdctl} endpoint health --cluster >/dev/null 2>&1"
        )
        return (
            etcd_ok
            and node.run(f"systemctl is-active --quiet {self.keepalived_unit}")
            and self.api_server_ready(name)
        )

    def back(self, name: str, start: Callable[[], object]) -> float | None:
        start()
        return wait_until(lambda: self.healthy(name), self.rejoin_timeout, interval=1.0)

    def stop_api_server(self, name: str) -> None:
        self.node(name).run(f"mv {self.manifest} {self.parked}")
        # kubelet looks at its manifests every delta fileCheckFrequency (5 s).
        if wait_until(lambda: not self.api_server_ready(name), 90) is None:
            raise AssertionError(f"kube-apiserver on {name} still answers 90 s after its manifest left")

    def drills(self) -> list[Drill]:
        def run(name: str, command: str) -> None:
            if not self.node(name).run(command):
                raise AssertionError(f"{name}: {command} failed")

        def api_server_back(name: str) -> float | None:
            return self.back(name, lambda: run(name, f"mv {self.parked} {self.manifest}"))

        def keepalived_down(name: str) -> None:
            run(name, f"systemctl stop {self.keepalived_unit}")

        def keepalived_back(name: str) -> float | None:
            return self.back(name, lambda: run(name, f"systemctl start {self.keepalived_unit}"))

        def power(name: str) -> Power:
            switch = self.node(name).power
            assert switch is not None
            return switch

        def server_back(name: str) -> float | None:
            return self.back(name, power(name).start)

        api_server, keepalived, stopped, killed = DRILL_NAMES
        found = [
            Drill(api_server, self.stop_api_server, api_server_back, self.graceful_bound),
            Drill(keepalived, keepalived_down, keepalived_back, self.graceful_bound),
        ]
        if all(n.power for n in self.nodes[:-1]):
            found += [
                Drill(stopped, lambda n: power(n).stop(), server_back, self.graceful_bound),
                Drill(killed, lambda n: power(n).kill(), server_back, self.hard_bound),
            ]
        return found

    def run(self, marker: Callable[[], bool], interval: float) -> dict[str, DrillResult]:
        """Every drill in turn, with the API through the virtual IP and ``marker`` polled."""
        results = {}
        api_ok = lambda: https_ok(*self.api, "/readyz", ca_file=self.ca_file)  # noqa: E731
        with Poller.running(api_ok, interval) as api, Poller.running(marker, interval) as served:
            time.sleep(2 * interval)
            for drill in self.drills():
                results[drill.name] = run_drill(
                    drill, api=api, marker=served, holder=self.holder, quorum=self.quorum
                )
        return results
