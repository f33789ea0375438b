"""``mawstron``: the command line.  Each subcommand lives in its own module and registers itself here."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module (under mawstron.cli) that defines add_parser(subparsers)
SUBCOMMANDS = {
    "models": "models",
    "consolidate": "consolidate",
    "checkpoints": "checkpoints",
    "plan": "plan",
    "bench": "bench",
    "eval": "evaluate",
    "train": "train",
    "data": "data",
    "features": "features",
    "show-mae": "show_mae",
    "weights": "weights",
    "doctor": "doctor",
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mawstron")
    except PackageNotFoundError:  # running from a checkout that is not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mawstron", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--verbose", action="store_true",
                        help="show DeepSpeed INFO lines and third-party warnings (also after the command)")
    # `deepspeed mawstron eval ...` puts --local_rank=N before the command; ranks read LOCAL_RANK instead
    parser.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in dict.fromkeys(SUBCOMMANDS.values()):
        importlib.import_module(f"mawstron.cli.{module}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    from mawstron.parallel.console import quiet_third_party

    verbose = args.verbose or getattr(args, "verbose_here", False) or "--verbose" in unknown
    quiet_third_party(verbose or None)
    if getattr(args, "trust_checkpoint", False):
        from mawstron.parallel.checkpoints.trust import trust_checkpoints

        trust_checkpoints()
    if not getattr(args, "pass_unknown", False) and unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        if getattr(args, "pass_unknown", False):  # `mawstron train RECIPE ...`: the rest belongs to the recipe
            return int(args.func(args, unknown) or 0)
        return int(args.func(args) or 0)
    except SystemExit as e:  # a command's one-line refusal (`raise SystemExit("...")`): a usage error, exit 2
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
