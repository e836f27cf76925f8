"""Run the dashboard service: ``python3 -m hvsuite_dashboard --config FILE``; with
``--check-config FILE`` only validate a settings file (the suite validates a new one this way
before it replaces the live one)."""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, DashboardConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hvsuite_dashboard", description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--config", metavar="FILE", help="serve with these settings")
    group.add_argument("--check-config", metavar="FILE", help="validate a settings file and exit")
    args = parser.parse_args(argv)
    try:
        config = DashboardConfig.load(args.check_config or args.config)
    except ConfigError as exc:
        print(f"hvsuite_dashboard: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"{args.check_config}: ok")
        return 0
    # The web stack is imported only to serve: validating a settings file needs none of it.
    import uvicorn

    from .api import create_app

    uvicorn.run(create_app(config), host=config.listen_address, port=config.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
