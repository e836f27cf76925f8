"""Benchmarks of a host, run from the controller over SSH: sysbench (CPU, memory), fio (a
bounded file on the host, removed after each run) and iperf3 (to a server on a second host,
started as a transient systemd unit and stopped by its name). Each run is bounded by the
settings' durations and sizes; nothing it starts or writes outlives it. Then the medians of
two rounds compared figure by figure, as a Markdown table and a PNG chart.

Measurements are not changes: they go through ``Host.run`` (never an op), so a run that
only measures reports no change.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import statistics
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from apply.poll import eventually
from apply.runner import Host
from steps.golf2.settings import FIGURES, Benchmarks

# The transient unit of the network benchmark's server on the peer; stopped by this name.
SERVER_UNIT = "hvsuite-golf2-iperf3"
# What iperf3's client says while the server still serves (or winds down) the previous test,
# and while it listens anew after one (3.12 closes its listener between tests).
SERVER_BETWEEN_TESTS = ("the server is busy", "unable to connect to server: Connection refused")
FIO_FILE = "hvsuite-golf2-fio.bin"


# -- commands and their output -----------------------------------------------------------


def cpu_command(bench: Benchmarks) -> str:
    return (
        f"sysbench cpu --threads=1 --cpu-max-prime={bench.cpu_max_prime} "
        f"--time={bench.cpu_seconds} --events=0 run"
    )


def memory_command(bench: Benchmarks) -> str:
    # The total is never reached: --time ends the run.
    return (
        "sysbench memory --threads=1 --memory-block-size=1M --memory-total-size=100T "
        f"--time={bench.memory_seconds} --events=0 run"
    )


def fio_path(bench: Benchmarks) -> str:
    return f"{bench.disk_directory.rstrip('/')}/{FIO_FILE}"


def fio_command(bench: Benchmarks) -> str:
    return (
        f"fio --name=hvsuite-golf2 --filename={shlex.quote(fio_path(bench))} --size={bench.disk_size_mib}M "
        f"--rw=randrw --rwmixread=50 --bs=4k --ioengine=psync --direct={int(bench.disk_direct)} "
        f"--time_based --runtime={bench.disk_seconds} --unlink=1 --output-format=json"
    )


def iperf3_command(peer: str, bench: Benchmarks, *, reverse: bool) -> str:
    return (
        f"iperf3 --client {shlex.quote(peer)} --port {bench.network_port} --time {bench.network_seconds} "
        f"--json{' --reverse' if reverse else ''}"
    )


def _number(pattern: str, output: str, what: str) -> float:
    found = re.search(pattern, output)
    if not found:
        raise ValueError(f"{what}: no figure in its output: {output.strip()[-300:]!r}")
    return float(found[1])


def parse_sysbench_cpu(output: str) -> float:
    """Events per second."""
    return _number(r"events per second:\s*([0-9.]+)", output, "sysbench cpu")


def parse_sysbench_memory(output: str) -> float:
    """MiB per second."""
    return _number(r"MiB transferred \(([0-9.]+) MiB/sec\)", output, "sysbench memory")


def _json(output: str, what: str) -> Any:
    # fio may print notes before its JSON document.
    start = output.find("{")
    try:
        return json.loads(output[start:]) if start >= 0 else json.loads(output)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what}: its output is not JSON ({exc}): {output.strip()[-300:]!r}") from exc


def parse_fio(output: str) -> tuple[float, float]:
    """(read IOPS, write IOPS) of the one job."""
    job = _json(output, "fio")["jobs"][0]
    return float(job["read"]["iops"]), float(job["write"]["iops"])


def parse_iperf3(output: str) -> float:
    """Mbit/s the receiving end counted."""
    document = _json(output, "iperf3")
    if "error" in document:
        raise ValueError(f"iperf3: {document['error']}")
    return float(document["end"]["sum_received"]["bits_per_second"]) / 1e6


# -- running them ------------------------------------------------------------------------


def server_bound_seconds(bench: Benchmarks) -> int:
    """How long the peer's server may run at most (the unit's RuntimeMaxSec): two rounds with
    a generous allowance for SSH and file layout, so a lost cleanup still ends it."""
    return 2 * bench.repetitions * (bench.round_seconds + 30) + 300


@contextlib.contextmanager
def iperf3_server(peer: Host, address: str, bench: Benchmarks, *, timeout: float = 30) -> Iterator[None]:
    """An iperf3 server on ``peer`` bound to ``address``, as the transient unit SERVER_UNIT,
    stopped by that name on the way out."""
    stop = f"systemctl stop {SERVER_UNIT}.service 2>/dev/null || true"
    peer.run(stop)  # one a killed run left behind
    peer.run(
        f"systemd-run --unit={SERVER_UNIT} --collect --property=RuntimeMaxSec={server_bound_seconds(bench)} "
        f"iperf3 --server --bind {shlex.quote(address)} --port {bench.network_port}"
    )
    try:
        listening = f"ss -ltnH 'sport = :{bench.network_port}'"
        # The unit is started asynchronously; bounded wait for its listener.
        if not eventually(lambda: peer.run(listening).stdout.strip(), timeout=timeout, interval=0.5):
            raise AssertionError(
                f"iperf3 on {peer.name} did not listen on port {bench.network_port} within {timeout} s"
            )
        yield
    finally:
        peer.run(stop)


def run_once(host: Host, peer: str, bench: Benchmarks) -> dict[str, float]:
    """One repetition of every benchmark on ``host`` (figures of FIGURES)."""
    figures = {
        "cpu": parse_sysbench_cpu(host.run(cpu_command(bench), timeout=bench.cpu_seconds + 30).stdout),
        "memory": parse_sysbench_memory(
            host.run(memory_command(bench), timeout=bench.memory_seconds + 30).stdout
        ),
    }
    try:
        output = host.run(fio_command(bench), timeout=bench.disk_seconds + 120).stdout
    finally:
        # --unlink removes it; an interrupted run must not leave it either.
        host.run(f"rm -f {shlex.quote(fio_path(bench))}")
    figures["disk_read"], figures["disk_write"] = parse_fio(output)
    for name, reverse in (("net_send", False), ("net_receive", True)):
        figures[name] = network(host, iperf3_command(peer, bench, reverse=reverse), bench)
    return figures


def network(host: Host, command: str, bench: Benchmarks, *, busy_timeout: float = 15.0) -> float:
    """One iperf3 run. The server serves one test at a time and, once a test ends, takes a
    moment before it accepts the next (it answers "busy", or its port refuses, meanwhile): a
    bounded wait for those answers only; any other error is the run's."""
    output = eventually(
        lambda: host.run(command, check=False, timeout=bench.network_seconds + 30).stdout,
        lambda text: not any(answer in text for answer in SERVER_BETWEEN_TESTS),
        timeout=busy_timeout,
        interval=1.0,
    )
    return parse_iperf3(output)


@dataclass
class Round:
    """Every sample of one round, per figure."""

    label: str
    samples: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in FIGURES})

    def add(self, figures: Mapping[str, float]) -> None:
        for name, value in figures.items():
            self.samples[name].append(value)

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])


def measure(host: Host, peer: str, bench: Benchmarks, label: str) -> Round:
    """``bench.repetitions`` repetitions; each runs every benchmark once, in turn, so a burst
    of load from elsewhere costs one sample of several figures rather than every sample of one."""
    result = Round(label)
    for _ in range(bench.repetitions):
        result.add(run_once(host, peer, bench))
    return result


# -- comparing them ----------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    name: str
    before: tuple[float, ...]
    after: tuple[float, ...]
    tolerance_percent: float

    @property
    def what(self) -> str:
        return FIGURES[self.name][0]

    @property
    def unit(self) -> str:
        return FIGURES[self.name][1]

    @property
    def before_median(self) -> float:
        return statistics.median(self.before)

    @property
    def after_median(self) -> float:
        return statistics.median(self.after)

    @property
    def floor(self) -> float:
        """The lowest "after" median within tolerance (every figure is higher-better)."""
        return self.before_median * (1 - self.tolerance_percent / 100)

    @property
    def change_percent(self) -> float:
        return (self.after_median / self.before_median - 1) * 100

    @property
    def regressed(self) -> bool:
        return self.after_median < self.floor


def compare(before: Round, after: Round, tolerances: Mapping[str, float]) -> list[Figure]:
    return [
        Figure(name, tuple(before.samples[name]), tuple(after.samples[name]), tolerances[name])
        for name in FIGURES
    ]


def _spread(values: tuple[float, ...]) -> str:
    return f"{min(values):.6g}..{max(values):.6g}"


def table(figures: list[Figure]) -> str:
    """The comparison as a Markdown table: medians, change, tolerance, samples' range."""
    lines = [
        "| Figure | Unit | Before (median) | After (median) | Change | Tolerance | Verdict "
        "| Before samples | After samples |",
        "|---|---|---:|---:|---:|---:|---|---|---|",
    ]
    for figure in figures:
        verdict = "REGRESSED" if figure.regressed else "ok"
        lines.append(
            f"| {figure.what} | {figure.unit} | {figure.before_median:.6g} | {figure.after_median:.6g} "
            f"| {figure.change_percent:+.1f} % | -{figure.tolerance_percent:g} % | {verdict} "
            f"| {_spread(figure.before)} | {_spread(figure.after)} |"
        )
    return "\n".join(lines) + "\n"


def chart(figures: list[Figure], title: str) -> bytes:
    """A PNG: one panel per figure, before and after medians as bars, every sample as a dot,
    the tolerance's floor as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")  # no display on the controller
    from matplotlib import pyplot

    columns = 3
    rows = -(-len(figures) // columns)
    fig, axes = pyplot.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
    for ax, figure in zip(axes.flat, figures, strict=False):
        medians = [figure.before_median, figure.after_median]
        ax.bar([0, 1], medians, color=["#8da0cb", "#66c2a5" if not figure.regressed else "#fc8d62"])
        for x, samples in ((0, figure.before), (1, figure.after)):
            ax.plot([x] * len(samples), samples, "k.", markersize=5)
        ax.axhline(figure.floor, color="#d62728", linestyle="--", linewidth=1)
        ax.set_xticks([0, 1], ["before", "after"])
        ax.set_title(f"{figure.name} ({figure.change_percent:+.1f} %)", fontsize=10)
        ax.set_ylabel(figure.unit)
    for ax in list(axes.flat)[len(figures) :]:
        ax.axis("off")
    legend = "bars: medians; dots: samples; dashed: lowest median within tolerance"
    fig.suptitle(f"{title}\n{legend}", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    pyplot.close(fig)
    return buffer.getvalue()


def as_json(figures: list[Figure]) -> str:
    return json.dumps(
        {
            figure.name: {
                "what": figure.what,
                "unit": figure.unit,
                "before": list(figure.before),
                "after": list(figure.after),
                "before_median": figure.before_median,
                "after_median": figure.after_median,
                "change_percent": round(figure.change_percent, 2),
                "tolerance_percent": figure.tolerance_percent,
                "regressed": figure.regressed,
            }
            for figure in figures
        },
        indent=2,
    )
