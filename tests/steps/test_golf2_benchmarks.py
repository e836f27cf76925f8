"""Team Golf-2's benchmarks as data: the bounded commands (checks/benchmarks.py), their
parsers on output captured from a scratch server (sysbench 1.0.20, fio 3.33, iperf 3.12),
the peer's server started and stopped by its unit's name, the comparison, its table and its
chart. No SSH (see apply.testing)."""

from __future__ import annotations

import json
import re

import pytest

from apply.testing import FakeConnection, fake_host
from checks import benchmarks
from steps.golf2.settings import FIGURES, Benchmarks

BENCH = Benchmarks()

SYSBENCH_CPU = """sysbench 1.0.20 (using system LuaJIT 2.1.0-beta3)

Running the test with following options:
Number of threads: 1
Initializing random number generator from current time


Prime numbers limit: 20000

Initializing worker threads...

Threads started!

CPU speed:
    events per second:  1868.68

General statistics:
    total time:                          1.0004s
    total number of events:              1871
"""

SYSBENCH_MEMORY = """sysbench 1.0.20 (using system LuaJIT 2.1.0-beta3)

Running memory speed test with the following options:
  block size: 1024KiB
  total size: 104857600MiB
  operation: write
  scope: global

Threads started!

Total operations: 31793 (31762.97 per second)

31793.00 MiB transferred (31762.97 MiB/sec)


General statistics:
    total time:                          1.0001s
"""

# fio --output-format=json, the fields the parser reads kept as fio printed them.
FIO = """note: both iodepth >= 1 and synchronous I/O engine are selected, queue depth will be capped at 1
{
  "fio version" : "fio-3.33",
  "jobs" : [
    {
      "jobname" : "hvsuite-golf2",
      "error" : 0,
      "read" : {"io_bytes" : 80379904, "bw" : 39248, "iops" : 9809.595202, "runtime" : 2000},
      "write" : {"io_bytes" : 80506880, "bw" : 39310, "iops" : 9825.087456, "runtime" : 2000}
    }
  ]
}
"""

IPERF3 = json.dumps(
    {
        "start": {"version": "iperf 3.12"},
        "end": {
            "sum_sent": {"bits_per_second": 16901012413.0, "sender": True},
            "sum_received": {"bits_per_second": 16893227231.321037, "sender": False},
        },
    }
)
IPERF3_BUSY = json.dumps(
    {"start": {}, "intervals": [], "end": {}, "error": "the server is busy running a test. try again later"}
)
IPERF3_REFUSED = json.dumps(
    {"start": {}, "intervals": [], "end": {}, "error": "unable to connect to server: Connection refused"}
)


# -- commands: bounded by the settings ----------------------------------------------------


def test_each_command_is_bounded_by_its_setting() -> None:
    bench = Benchmarks(cpu_seconds=3, memory_seconds=4, disk_seconds=5, disk_size_mib=32, network_seconds=6)
    assert "--time=3 " in benchmarks.cpu_command(bench)
    assert "--time=4 " in benchmarks.memory_command(bench)
    fio = benchmarks.fio_command(bench)
    assert all(f in fio for f in ("--size=32M", "--time_based", "--runtime=5", "--unlink=1", "--direct=1"))
    assert "--filename=/var/tmp/hvsuite-golf2-fio.bin" in fio
    assert benchmarks.iperf3_command("10.0.0.2", bench, reverse=True) == (
        "iperf3 --client 10.0.0.2 --port 5201 --time 6 --json --reverse"
    )
    assert bench.round_seconds == 3 + 4 + 5 + 2 * 6


def test_bad_benchmark_bounds_are_refused_naming_the_field() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"network_seconds"):
        Benchmarks(network_seconds=3600)
    with pytest.raises(ValidationError, match=r"disk_directory"):
        Benchmarks(disk_directory="var/tmp")


# -- parsers ----------------------------------------------------------------------------------


def test_the_parsers_read_the_tools_output() -> None:
    assert benchmarks.parse_sysbench_cpu(SYSBENCH_CPU) == 1868.68
    assert benchmarks.parse_sysbench_memory(SYSBENCH_MEMORY) == 31762.97
    assert benchmarks.parse_fio(FIO) == (9809.595202, 9825.087456)
    assert benchmarks.parse_iperf3(IPERF3) == pytest.approx(16893.227231)


@pytest.mark.parametrize(
    ("parser", "output", "message"),
    [
        (benchmarks.parse_sysbench_cpu, "FATAL: unknown test", r"sysbench cpu: no figure"),
        (benchmarks.parse_sysbench_memory, "", r"sysbench memory: no figure"),
        (benchmarks.parse_fio, "fio: file hash not empty", r"fio: its output is not JSON"),
        (benchmarks.parse_iperf3, IPERF3_REFUSED, r"iperf3: unable to connect to server"),
    ],
)
def test_output_without_a_figure_is_an_error_naming_the_tool(parser, output: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parser(output)


# -- running ----------------------------------------------------------------------------------


def _measuring_host() -> FakeConnection:
    conn = FakeConnection(
        {
            benchmarks.cpu_command(BENCH): (0, SYSBENCH_CPU, ""),
            benchmarks.memory_command(BENCH): (0, SYSBENCH_MEMORY, ""),
            benchmarks.fio_command(BENCH): (0, FIO, ""),
            benchmarks.iperf3_command("10.0.0.2", BENCH, reverse=False): (0, IPERF3, ""),
            benchmarks.iperf3_command("10.0.0.2", BENCH, reverse=True): (0, IPERF3, ""),
        },
        strict=False,
    )
    return conn


def test_a_round_runs_every_benchmark_per_repetition_and_changes_nothing() -> None:
    conn = _measuring_host()
    host = fake_host(conn)
    measured = benchmarks.measure(host, "10.0.0.2", Benchmarks(repetitions=2), "before")
    assert {name: len(values) for name, values in measured.samples.items()} == dict.fromkeys(FIGURES, 2)
    assert measured.median("cpu") == 1868.68
    # The fio file is removed even though --unlink already did; nothing is an op.
    assert conn.commands.count(f"rm -f {benchmarks.fio_path(BENCH)}") == 2
    assert host.changes == [] and conn.uploads == []


def test_a_busy_peer_server_is_waited_for_within_a_bound() -> None:
    command = benchmarks.iperf3_command("10.0.0.2", BENCH, reverse=True)
    answers = iter([IPERF3_BUSY, IPERF3_BUSY, IPERF3])
    conn = FakeConnection({command: lambda _: (0, next(answers), "")})
    assert benchmarks.network(fake_host(conn), command, BENCH, busy_timeout=10) == pytest.approx(16893.227231)
    assert conn.commands.count(command) == 3


def test_a_server_busy_beyond_the_bound_is_an_error() -> None:
    command = benchmarks.iperf3_command("10.0.0.2", BENCH, reverse=False)
    conn = FakeConnection({command: (1, IPERF3_BUSY, "")})
    with pytest.raises(ValueError, match="iperf3: the server is busy"):
        benchmarks.network(fake_host(conn), command, BENCH, busy_timeout=0)


def test_a_failed_disk_run_still_removes_its_file() -> None:
    conn = _measuring_host()
    conn.respond(benchmarks.fio_command(BENCH), (1, "", "fio: pid=0, err=28/file:No space left on device"))
    with pytest.raises(Exception, match="No space left"):
        benchmarks.run_once(fake_host(conn), "10.0.0.2", BENCH)
    assert conn.commands[-1] == f"rm -f {benchmarks.fio_path(BENCH)}"


def test_the_peer_server_is_a_bounded_unit_stopped_by_its_name() -> None:
    conn = FakeConnection({"ss -ltnH 'sport = :5201'": (0, "LISTEN 0 5 10.0.0.2:5201 0.0.0.0:*\n", "")})
    with benchmarks.iperf3_server(fake_host(conn), "10.0.0.2", BENCH):
        start = next(c for c in conn.commands if c.startswith("systemd-run"))
    bound = benchmarks.server_bound_seconds(BENCH)
    assert start == (
        f"systemd-run --unit={benchmarks.SERVER_UNIT} --collect --property=RuntimeMaxSec={bound} "
        "iperf3 --server --bind 10.0.0.2 --port 5201"
    )
    stop = f"systemctl stop {benchmarks.SERVER_UNIT}.service 2>/dev/null || true"
    assert conn.commands[0] == stop and conn.commands[-1] == stop
    assert bound > 2 * BENCH.repetitions * BENCH.round_seconds


def test_a_server_that_never_listens_is_an_error_and_is_stopped() -> None:
    conn = FakeConnection()
    with (
        pytest.raises(AssertionError, match="did not listen on port 5201"),
        benchmarks.iperf3_server(fake_host(conn), "10.0.0.2", BENCH, timeout=0.1),
    ):
        pass
    assert conn.commands[-1].startswith(f"systemctl stop {benchmarks.SERVER_UNIT}.service")


# -- comparing ----------------------------------------------------------------------------------


def _round(label: str, scale: float) -> benchmarks.Round:
    measured = benchmarks.Round(label)
    for factor in (0.9, 1.0, 1.3):
        measured.add({name: 100.0 * factor * scale for name in FIGURES})
    return measured


def test_a_median_below_its_tolerance_is_a_regression_and_one_within_is_not() -> None:
    tolerances = dict.fromkeys(FIGURES, 10.0) | {"cpu": 25.0}
    figures = {f.name: f for f in benchmarks.compare(_round("b", 1.0), _round("a", 0.8), tolerances)}
    assert figures["cpu"].before_median == 100.0 and figures["cpu"].after_median == pytest.approx(80.0)
    assert figures["cpu"].change_percent == pytest.approx(-20.0)
    assert not figures["cpu"].regressed and figures["memory"].regressed
    # Exactly at the floor is within.
    assert not benchmarks.compare(_round("b", 1.0), _round("a", 0.9), dict.fromkeys(FIGURES, 10.0))[
        0
    ].regressed


def test_the_table_and_the_json_hold_every_figure() -> None:
    figures = benchmarks.compare(_round("b", 1.0), _round("a", 0.8), dict.fromkeys(FIGURES, 10.0))
    table = benchmarks.table(figures)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == [what for what, _ in FIGURES.values()]
    assert all(
        re.search(r"\| 100 \| 80 \| -20\.0 % \| -10 % \| REGRESSED \| 90\.\.130 \| 72\.\.104 \|", r)
        for r in rows
    )
    document = json.loads(benchmarks.as_json(figures))
    assert set(document) == set(FIGURES) and document["cpu"]["before"] == [90.0, 100.0, 130.0]


def test_the_chart_is_a_png() -> None:
    figures = benchmarks.compare(_round("b", 1.0), _round("a", 1.1), dict.fromkeys(FIGURES, 10.0))
    png = benchmarks.chart(figures, "test")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
