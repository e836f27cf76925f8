"""Manage scratch servers by hand.

python -m targets list
python -m targets create NAME [NAME ...] [--role ROLE ...] [--rebuild]   # in parallel
python -m targets destroy NAME
python -m targets destroy-all        # only what carries the suite's label, and its network
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from settings.loader import ConfigError, load_settings
from targets import TargetError, scratch
from transport.podman import PodmanError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m targets", description="hvsuite scratch servers")
    parser.add_argument("--config", default=None, help="suite config (default: settings/scratch.toml)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the suite's scratch servers")
    create = commands.add_parser("create", help="create (or reuse) scratch servers, in parallel")
    create.add_argument("names", metavar="NAME", nargs="+")
    create.add_argument(
        "--role", dest="roles", action="append", default=[], help="a role every server holds (repeatable)"
    )
    create.add_argument("--rebuild", action="store_true", help="recreate them even if they exist")
    destroy = commands.add_parser("destroy", help="remove one scratch server and its volume")
    destroy.add_argument("name")
    commands.add_parser("destroy-all", help="remove every scratch server, volume and the suite's network")
    args = parser.parse_args(argv)
    # The library's warnings (servers removed as stale, roles kept) are one line each.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        settings = load_settings(args.config)
        if args.command == "list":
            rows = scratch.list_servers(settings.scratch)
            print(f"{'NAME':<28} {'STATE':<10} {'ADDRESS':<16} {'IMAGE':<8} {'ROLES':<24} CREATED")
            for row in rows:
                image = "current" if row.current else "stale"
                roles = ",".join(row.roles) or "-"
                address = row.address or "-"
                print(f"{row.name:<28} {row.state:<10} {address:<16} {image:<8} {roles:<24} {row.created}")
        elif args.command == "create":
            started = time.monotonic()
            fleet = scratch.create_fleet(
                {name: args.roles for name in args.names}, settings.scratch, rebuild=args.rebuild
            )
            total = time.monotonic() - started
            reports = [report for _target, report in fleet.values()]
            if any(report.image_built for report in reports):
                print(f"image {settings.scratch.image} built in {reports[0].image_seconds:.1f} s")
            for target, report in fleet.values():
                what = "created" if report.created else "reused"
                roles = ",".join(target.roles) or "-"
                print(f"{what} {target} roles {roles}: ssh ready in {report.ready_seconds:.2f} s")
            print(f"{len(fleet)} server(s) ready in {total:.2f} s")
            first = next(iter(fleet.values()))[0]
            login = f"{first.user}@{first.address}"
            print(f"login: ssh -i {first.key_file} -o UserKnownHostsFile={first.known_hosts[0]} {login}")
        elif args.command == "destroy":
            started = time.monotonic()
            found = scratch.destroy(args.name)
            seconds = time.monotonic() - started
            print(f"destroyed {args.name} in {seconds:.2f} s" if found else f"no scratch server {args.name}")
        else:
            removed = scratch.destroy_all(settings.scratch)
            print(f"destroyed {len(removed)} scratch server(s): {', '.join(removed) or '-'}")
    except (ConfigError, TargetError, PodmanError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
