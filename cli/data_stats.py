"""``mawstron data stats``: a collection's hashtag distribution, natural and re-sampled, as a table and a plot."""

from __future__ import annotations

import json
import os
import sys


def add_parser(sub) -> None:
    t = sub.add_parser("stats", help="natural vs re-sampled hashtag distribution (table + rank/share plot)")
    t.add_argument("--shards", required=True, help="the training shards (a glob, brace pattern or list)")
    t.add_argument("--vocab", required=True, help="vocab.json from `mawstron data vocab` (with per-tag counts)")
    t.add_argument("--resample", default="sqrt", choices=("sqrt", "inverse"), help="the rule to show")
    t.add_argument("--power", type=float, default=-1.0, help="override the rule's power (sqrt 0.5, inverse 0)")
    t.add_argument("--plot", default="", help="write the rank/share plot here (PNG; needs the plot extra)")
    t.add_argument("--json", default="", help="write every number here")
    t.add_argument("--top", type=int, default=10, help="rows printed from the head and from the tail")
    t.set_defaults(func=run_stats)


def run_stats(args) -> int:
    from mawstron.core.data.resample import collection_tag_sets, distribution_report, resample_power
    from mawstron.core.data.shards import Vocab, expand_shards

    try:
        shards = expand_shards(args.shards, what="--shards")
        vocab = Vocab(args.vocab)
        vocab.counts()
        power = resample_power(args.resample, args.power)
        report = distribution_report(collection_tag_sets(shards, vocab), vocab, power)
    except (ValueError, OSError) as e:
        print(f"mawstron data stats: {e}", file=sys.stderr)
        return 2
    import datetime

    from mawstron.parallel.launcher.bench import git_commit

    report.update(shards=len(shards), vocab=args.vocab, resample=args.resample, commit=git_commit(),
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    rows = report["tags"]
    shown = rows if len(rows) <= 2 * args.top else rows[:args.top] + [None] + rows[-args.top:]
    print(f"{report['images']} images ({report['images_without_known_tag']} without a known tag, never drawn), "
          f"{len(rows)} tags; data.resample={args.resample} (power {power:g}): share of tag occurrences")
    print(f"{'rank':>4} {'tag':<14} {'images':>7} {'natural':>8} {'resampled':>9} {'target':>8}")
    for r in shown:
        if r is None:
            print(f"{'...':>4}")
            continue
        print(f"{r['rank']:>4} {r['tag']:<14} {r['images']:>7} {r['natural_share']:>8.2%} "
              f"{r['resampled_share']:>9.2%} {r['target_share']:>8.2%}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.plot:
        write_distribution_plot(report, args.plot, title=f"{args.shards} ({report['images']} images); "
                                                          f"{report['date'][:10]}, commit {report['commit']}")
        print(f"plot -> {args.plot}")
    return 0


def write_distribution_plot(report: dict, path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["tags"]
    ranks = [r["rank"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(ranks, [r["natural_share"] for r in rows], "o-", ms=3, label="natural (before)")
    ax.plot(ranks, [r["resampled_share"] for r in rows], "s-", ms=3,
            label=f"re-sampled, power {report['power']:g} (after)")
    ax.plot(ranks, [r["target_share"] for r in rows], "k--", lw=1, label="target: f^power, renormalised")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tag rank (by images carrying it)")
    ax.set_ylabel("share of tag occurrences in the stream")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
