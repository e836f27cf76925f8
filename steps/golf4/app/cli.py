"""hvsuite: the operator's command on the hypervisor host. It asks the dashboard's HTTP API
on this host (the port from the service's settings) and prints what it answers: a table, or
the API's JSON with --json.

    hvsuite status     every team's latest outcome
    hvsuite signals    the latest completion signals
    hvsuite timeline   the latest run's teams and durations
    hvsuite hosts      host health from Prometheus, the fleet and the microVMs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

DEFAULT_CONFIG = "/etc/hvsuite/dashboard.json"


class CommandError(Exception):
    pass


def base_url(config_file: str) -> str:
    """The API on loopback, at the port the service listens on."""
    try:
        with open(config_file, encoding="utf-8") as handle:
            port = int(json.load(handle)["port"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CommandError(f"cannot read the dashboard's port from {config_file}: {exc}") from exc
    return f"http://127.0.0.1:{port}"


def get(url: str, path: str, timeout: float) -> Any:
    try:
        with urllib.request.urlopen(f"{url}{path}", timeout=timeout) as response:
            return json.loads(response.read().decode())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError):
            detail = json.loads(detail).get("detail", detail)
        raise CommandError(f"GET {path}: HTTP {exc.code}: {detail}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise CommandError(
            f"GET {url}{path}: {getattr(exc, 'reason', exc)} (is the dashboard service running?)"
        ) from exc


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def show_status(data: dict[str, Any]) -> str:
    rows = [
        [str(team["phase"]), team["name"], team["outcome"], team.get("at") or ""] for team in data["teams"]
    ]
    counts = ", ".join(f"{outcome} {count}" for outcome, count in data["counts"].items() if count)
    text = [f"target {data['target']}, published {data['published_at']}"]
    if data.get("last_run_text"):
        text.append(f"last completed run: {data['last_run_text']}")
    return "\n".join([*text, "", table(["PHASE", "TEAM", "OUTCOME", "RECORDED"], rows), "", counts])


def show_signals(data: list[dict[str, Any]]) -> str:
    return "\n\n".join(f"{signal['at']}\n{signal['text']}" for signal in data) or "no signal yet"


def show_timeline(data: dict[str, Any]) -> str:
    origin = data.get("origin") or 0.0
    rows = [
        [
            span["team"],
            str(span["phase"]),
            span["outcome"],
            f"{span['start'] - origin:.1f}",
            f"{span['duration']:.1f}",
        ]
        for span in data["spans"]
    ]
    started = datetime.fromtimestamp(origin, UTC).isoformat(timespec="seconds") if data.get("origin") else "-"
    head = f"{data['title']} (started {started}, {data['makespan']:.1f} s)"
    return "\n".join([head, "", table(["TEAM", "PHASE", "OUTCOME", "START (s)", "DURATION (s)"], rows)])


def _gib(value: float | None) -> str:
    return "?" if value is None else f"{value / 2**30:.1f} GiB"


def show_hosts(data: dict[str, Any]) -> str:
    hosts, vms = data["hosts"], data["microvms"]
    prometheus = hosts["prometheus"]
    reach = "reachable" if prometheus["reachable"] else f"unreachable: {prometheus['error']}"
    fleet = [[m["name"], m["address"], ", ".join(m["roles"])] for m in hosts["fleet"]]
    targets = [[t["job"], t["instance"], "up" if t["up"] else "DOWN"] for t in hosts["targets"]]
    nodes = [
        [
            n["instance"],
            "?" if n["load1"] is None else f"{n['load1']:.2f}",
            f"{_gib(n['memory_available_bytes'])} / {_gib(n['memory_total_bytes'])}",
            f"{_gib(n['root_available_bytes'])} / {_gib(n['root_size_bytes'])}",
        ]
        for n in hosts["nodes"]
    ]
    unit = vms["flintlockd"]
    state = unit["error"] or f"{unit['load_state']}, {unit['active_state']} ({unit['sub_state']})"
    machines = [
        [v["namespace"], v["name"], v["uid"], "yes" if v["running"] else "no"] for v in vms["microvms"]
    ]
    return "\n".join(
        [
            table(["HOST", "ADDRESS", "ROLES"], fleet),
            "",
            f"Prometheus {prometheus['url']}: {reach}",
            table(["JOB", "INSTANCE", "UP"], targets),
            "",
            table(["INSTANCE", "LOAD1", "MEMORY FREE", "ROOT FREE"], nodes),
            "",
            f"flintlockd: {state}; state directory {vms['state_dir']}"
            + ("" if vms["state_dir_present"] else " (absent)"),
            table(["NAMESPACE", "NAME", "UID", "RUNNING"], machines) if machines else "no microVM",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hvsuite", description="The hvsuite dashboard's status on this host."
    )
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG, help=f"the service's settings (default {DEFAULT_CONFIG})"
    )
    parser.add_argument("--url", help="the API's base URL (default: loopback, the service's port)")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds per request (default 15)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (
        ("status", "every team's latest outcome"),
        ("signals", "the latest completion signals"),
        ("timeline", "the latest run's teams and durations"),
        ("hosts", "host health, the fleet and the microVMs"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("--json", action="store_true", help="print the API's JSON")
        if name == "signals":
            command.add_argument("--limit", type=int, default=20, help="how many, newest first (default 20)")
    args = parser.parse_args(argv)
    try:
        url = (args.url or base_url(args.config)).rstrip("/")
        if args.command == "status":
            data: Any = get(url, "/api/status", args.timeout)
            text = show_status(data)
        elif args.command == "signals":
            data = get(url, f"/api/signals?limit={max(1, min(args.limit, 1000))}", args.timeout)
            text = show_signals(data)
        elif args.command == "timeline":
            data = get(url, "/api/timeline", args.timeout)
            text = show_timeline(data)
        else:
            data = {
                "hosts": get(url, "/api/hosts", args.timeout),
                "microvms": get(url, "/api/microvms", args.timeout),
            }
            text = show_hosts(data)
    except CommandError as exc:
        print(f"hvsuite: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
