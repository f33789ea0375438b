"""``mawstron``: the command line.  Each subcommand lives in its own module and registers itself here."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module (under mawstron.cli) that defines add_parser(subparsers)
SUBCOMMANDS = {
    "models": "models",
    "consolidate": "consolidate",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mawstron", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in dict.fromkeys(SUBCOMMANDS.values()):
        importlib.import_module(f"mawstron.cli.{module}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
