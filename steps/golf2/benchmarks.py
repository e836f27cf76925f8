"""Team Golf-2: the benchmark tools, Debian packages on the primary host and on the
bench-peer. The benchmarks themselves are measurements, not changes: the checks run them
(checks/benchmarks.py) and nothing they start or write stays on a host."""

from __future__ import annotations

from apply import ops
from apply.api import Context, step

# sysbench: CPU and memory; fio: disk; iperf3: network (client here, server on the peer).
PRIMARY_PACKAGES = ("sysbench", "fio", "iperf3")
PEER_PACKAGES = ("iperf3",)


@step("Benchmarking tools")
def tools(ctx: Context) -> None:
    """sysbench, fio and iperf3 on the host the benchmarks measure."""
    ops.packages(ctx.host, PRIMARY_PACKAGES)


@step("Benchmarking peer")
def peer_tools(ctx: Context) -> None:
    """iperf3 on the bench-peer, the far end of the network benchmark."""
    ops.packages(ctx.host, PEER_PACKAGES)
