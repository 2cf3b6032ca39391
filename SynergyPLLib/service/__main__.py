"""``python -m SynergyPLLib.service {init,serve,demo}``: the service's subcommands without the engine's."""

from __future__ import annotations

import argparse
import sys

from .commands import add_parsers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m SynergyPLLib.service")
    add_parsers(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:
        print(f"synergypl {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
