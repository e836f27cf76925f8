"""Manage scratch servers by hand.

python -m targets list
python -m targets create NAME [--rebuild]
python -m targets destroy NAME
python -m targets destroy-all        # only what carries the suite's label, and its network
"""

from __future__ import annotations

import argparse
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
    create = commands.add_parser("create", help="create (or reuse) a scratch server")
    create.add_argument("name")
    create.add_argument("--rebuild", action="store_true", help="recreate it even if it exists")
    destroy = commands.add_parser("destroy", help="remove one scratch server and its volume")
    destroy.add_argument("name")
    commands.add_parser("destroy-all", help="remove every scratch server, volume and the suite's network")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        if args.command == "list":
            rows = scratch.list_servers(settings.scratch)
            print(f"{'NAME':<28} {'STATE':<10} {'ADDRESS':<16} {'IMAGE':<8} CREATED")
            for row in rows:
                image = "current" if row.current else "stale"
                print(f"{row.name:<28} {row.state:<10} {row.address or '-':<16} {image:<8} {row.created}")
        elif args.command == "create":
            timeout = settings.scratch.ready_timeout
            target, report = scratch.create(
                args.name, settings.scratch, rebuild=args.rebuild, ready_timeout=timeout
            )
            if report.image_built:
                print(f"image {settings.scratch.image} built in {report.image_seconds:.1f} s")
            what = "created" if report.created else "reused"
            print(f"{what} {target}: ssh ready in {report.ready_seconds:.2f} s")
            login = f"{target.user}@{target.address}"
            known = target.known_hosts[0]
            print(f"login: ssh -i {target.key_file} -o UserKnownHostsFile={known} {login}")
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
