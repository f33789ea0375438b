"""``mawstron weights list|get``: the released MAWS and MAE weights, downloaded into the cache by name."""

from __future__ import annotations

import sys


def add_parser(subparsers):
    p = subparsers.add_parser("weights", help="released MAWS / MAE weights: `weights list`, `weights get NAME`")
    sub = p.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="the names, what each is, and whether it is cached")
    ls.set_defaults(func=run_list)
    get = sub.add_parser("get", help="download (once) into the cache and print the path")
    get.add_argument("names", nargs="+", help="e.g. maws_vit_h14 mae_vit_l16 mae_in1k_vit_b16")
    get.set_defaults(func=run_get)


def run_list(args) -> int:
    import os

    from mawstron.core.hub import RELEASES, cache_dir, cached_path

    print(f"cache: {cache_dir()} (set MAWSTRON_CACHE to move it)")
    for name, r in sorted(RELEASES.items()):
        check = "sha256" if r.sha256 else (f"md5 {r.md5_prefix}..." if r.md5_prefix else "no published checksum")
        here = "cached" if os.path.isfile(cached_path(name)) else ""
        print(f"  {name:<24} {r.preset:<10} {r.description}; {check} {here}".rstrip())
    return 0


def _progress(done: int, total: int) -> None:
    if total > 0:
        print(f"\r  {done / 2**20:8.1f} / {total / 2**20:.1f} MiB", end="", file=sys.stderr, flush=True)


def run_get(args) -> int:
    from mawstron.core.hub import WeightsDownloadError, get_weights

    from mawstron.parallel.checkpoints.sources import check_weights_file

    for name in args.names:
        try:
            path = get_weights(name, progress=_progress if sys.stderr.isatty() else None)
            check_weights_file(path)  # a file put into the cache by hand, or damaged there: named in one line
        except (KeyError, WeightsDownloadError, ValueError) as e:
            print(f"mawstron weights get: {e.args[0]}", file=sys.stderr)
            return 2
        print(path)
    return 0
