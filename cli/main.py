"""``mawstron``: the command line.  Each subcommand lives in its own module and registers itself here."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module (under mawstron.cli) that defines add_parser(subparsers)
SUBCOMMANDS = {
    "models": "models",
    "consolidate": "consolidate",
    "plan": "plan",
    "bench": "bench",
    "eval": "evaluate",
    "train": "train",
    "data": "data",
    "features": "features",
    "show-mae": "show_mae",
    "weights": "weights",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mawstron", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in dict.fromkeys(SUBCOMMANDS.values()):
        importlib.import_module(f"mawstron.cli.{module}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if getattr(args, "pass_unknown", False):  # `mawstron train RECIPE ...`: the rest belongs to the recipe
        return int(args.func(args, unknown) or 0)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
