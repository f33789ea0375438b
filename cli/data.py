"""``mawstron data synth|vocab|stats|index|tags|from-folder``: make a synthetic shard collection, build the hashtag
vocabulary, index shards for DALI (and find bad samples), precompute the tag ids re-sampling reads, convert folders.

The jobs over shards take ``--engine local|ray`` (core/data/jobs.py): plain processes on this machine by default,
or Ray tasks on a local Ray or on a cluster (``--ray-address`` / ``RAY_ADDRESS``)."""

from __future__ import annotations

import json
import sys
import time

from mawstron.core.data.synth import SCENE_NAMES

from .data_engine import add_engine_args, engine_kwargs


def _needs_index_dir(shards: list[str], index_dir: str, what: str) -> None:
    from mawstron.core.data.storage import is_remote

    if not index_dir and any(is_remote(s) for s in shards):
        raise ValueError(f"{what}: the shards are in object storage, so their index files cannot go beside them; "
                         f"pass --index-dir DIR (and data.index_dir=DIR when training)")


def add_parser(subparsers):
    p = subparsers.add_parser("data", help="data: `mawstron data synth --out DIR`, `data vocab`, `data index`")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    s = sub.add_parser("synth", help="write a procedurally generated web-image collection as JPEG webdataset shards")
    s.add_argument("--out", required=True, help="output folder (train-*.tar, eval-{train,test}-*.tar, manifest.json)")
    s.add_argument("--images", type=int, required=True, help="training images (noisy hashtags)")
    s.add_argument("--seed", type=int, default=0, help="the collection is byte-identical for a seed")
    s.add_argument("--size", type=int, default=64, help="image side in pixels (16-512)")
    s.add_argument("--eval-images", type=int, default=500, help="images in each evaluation split (clean labels)")
    s.add_argument("--shard-size", type=int, default=500, help="samples per tar shard")
    s.add_argument("--workers", type=int, default=1, help="processes (the bytes do not depend on it)")
    s.add_argument("--tail", default="none",
                   help="none (uniform objects) or zipf:S: shapes, colours, textures and noise tags drawn with "
                        "P(rank k) ~ k^-S from longer lists (12 shapes, 12 colours), e.g. zipf:1.1")
    s.add_argument("--scene", default="web", choices=SCENE_NAMES,
                   help="web: freely rotated objects (18-36%% of the side) among clutter; upright: upright objects "
                        "(26-40%%), no clutter, shapes a small ViT learns from scratch within a CPU budget; things: 48 "
                        "named categories (dogs, cats, birds ... in breeds) whose hashtags name them, as on Instagram "
                        "(with --tail zipf:S: a long tail over the categories)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace the collection in a non-empty --out (its old shards are removed)")
    s.set_defaults(func=run_synth)

    v = sub.add_parser("vocab", help="count hashtags over shards and write the WSP vocabulary")
    v.add_argument("--shards", required=True, help="a glob, brace pattern or comma-separated list of tar shards")
    v.add_argument("--min-count", type=int, default=1, help="keep tags on at least this many images")
    v.add_argument("--synonyms", default="", help="json: variant -> canonical tag (e.g. DIR/synonyms.json)")
    v.add_argument("--out", required=True, help="vocab.json to write")
    add_engine_args(v)
    v.set_defaults(func=run_vocab)

    from .data_stats import add_parser as add_stats_parser

    add_stats_parser(sub)

    i = sub.add_parser("index", help="write DALI index files (wds2idx v1.2) for shards; report bad samples")
    i.add_argument("--shards", required=True, help="a glob, brace pattern or comma-separated list of tar shards")
    i.add_argument("--index-dir", default="", help="where to write them (default: beside the shards)")
    i.add_argument("--no-validate", action="store_true", help="check JPEG markers only, do not decode with PIL")
    i.add_argument("--force", action="store_true", help="rebuild even if a cached index is current")
    add_engine_args(i)
    i.set_defaults(func=run_index)

    g = sub.add_parser("tags", help="precompute each sample's known tag ids per shard, beside its index, so that "
                                    "a rank with data.resample starts without reading every sample's metadata")
    g.add_argument("--shards", required=True, help="the training shards (a glob, brace pattern or list)")
    g.add_argument("--vocab", required=True, help="the vocab.json training uses (data.vocab)")
    g.add_argument("--index-dir", default="", help="the data.index_dir training uses (default: beside the shards)")
    g.add_argument("--no-validate", action="store_true",
                   help="index with JPEG marker checks only (data.validate=false)")
    add_engine_args(g)
    g.set_defaults(func=run_tags)

    f = sub.add_parser("from-folder", help="convert an ImageFolder, or images with KEY.txt/KEY.json sidecars, "
                                           "into indexed webdataset shards")
    f.add_argument("src", help="SRC/<class>/<image> (labelled) or a folder of images with optional sidecars")
    f.add_argument("--out", required=True, help="output folder (SPLIT-NNNNNN.tar + .idx, manifest.json)")
    f.add_argument("--split", default="train", help="shard name prefix, e.g. train or val (default: train)")
    f.add_argument("--shard-size", type=int, default=1000, help="samples per tar shard")
    f.add_argument("--overwrite", action="store_true", help="replace existing SPLIT-*.tar shards in --out")
    add_engine_args(f)
    f.set_defaults(func=run_from_folder)


def run_synth(args) -> int:
    from mawstron.core.data.synth import synthesize

    start = time.perf_counter()
    try:
        m = synthesize(args.out, images=args.images, seed=args.seed, size=args.size, eval_images=args.eval_images,
                       shard_size=args.shard_size, workers=args.workers, tail=args.tail,
                       scene=args.scene, overwrite=args.overwrite)
    except ValueError as e:
        print(f"mawstron data synth: {e}", file=sys.stderr)
        return 2
    print(f"wrote {m['counts']['train']} train images in {len(m['shards']['train'])} shards, "
          f"{m['counts']['eval-train']} + {m['counts']['eval-test']} eval images ({m['num_classes']} classes), "
          f"{args.size} px, to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


def run_vocab(args) -> int:
    from mawstron.core.data.jobs import vocab_job
    from mawstron.core.data.shards import expand_shards, load_synonyms

    start = time.perf_counter()
    try:
        engine = engine_kwargs(args)
        shards = expand_shards(args.shards, what="--shards")
        vocab = vocab_job(shards, min_count=args.min_count, synonyms=load_synonyms(args.synonyms), **engine)
    except (ValueError, OSError) as e:
        print(f"mawstron data vocab: {e}", file=sys.stderr)
        return 2
    if not vocab["tags"]:
        print(f"mawstron data vocab: no hashtag occurs on {args.min_count}+ images; lower --min-count",
              file=sys.stderr)
        return 2
    from mawstron.core.data.shards import _write_atomic

    _write_atomic(args.out, json.dumps(vocab, indent=1))  # never a half-written vocab.json
    top = ", ".join(f"{t} ({vocab['counts'][t]})" for t in vocab["tags"][:8])
    print(f"{len(vocab['tags'])} tags (min count {args.min_count}) over {len(shards)} shards -> {args.out} in "
          f"{time.perf_counter() - start:.1f} s ({args.engine}); top: {top}")
    return 0


def run_index(args) -> int:
    from mawstron.core.data.jobs import index_job
    from mawstron.core.data.shards import expand_shards

    try:
        engine = engine_kwargs(args)
        shards = expand_shards(args.shards, what="--shards")
        _needs_index_dir(shards, args.index_dir, "mawstron data index")
        results = index_job(shards, validate=not args.no_validate, index_dir=args.index_dir, force=args.force,
                            **engine)
    except (ValueError, OSError) as e:
        print(f"mawstron data index: {e}", file=sys.stderr)
        return 2
    _print_shard_results(results)
    return 0


def _print_shard_results(results: list[dict]) -> None:
    total, bad = 0, {}
    for r in results:
        total += r["samples"]
        for reason, n in r["skipped"].items():
            bad[reason] = bad.get(reason, 0) + n
        note = f"  skipped {r['skipped']}" if r["skipped"] else ""
        print(f"{r['shard']}: {r['samples']} samples -> {r['path'] or '(nothing usable)'}{note}")
    print(f"{len(results)} shards, {total} usable samples, skipped {sum(bad.values())} {bad}")


def run_tags(args) -> int:
    from mawstron.core.data.jobs import tag_ids_job
    from mawstron.core.data.shards import Vocab, expand_shards

    start = time.perf_counter()
    try:
        engine = engine_kwargs(args)
        shards = expand_shards(args.shards, what="--shards")
        _needs_index_dir(shards, args.index_dir, "mawstron data tags")
        Vocab(args.vocab)
        results = tag_ids_job(shards, vocab_path=args.vocab, validate=not args.no_validate,
                              index_dir=args.index_dir, **engine)
    except (ValueError, OSError) as e:
        print(f"mawstron data tags: {e}", file=sys.stderr)
        return 2
    _print_shard_results(results)
    print(f"tag ids of {sum(r['samples'] for r in results)} images for {args.vocab} in "
          f"{time.perf_counter() - start:.1f} s: data.resample now reads one file per shard at start")
    return 0


def run_from_folder(args) -> int:
    from mawstron.core.data.from_folder import convert_folder

    start = time.perf_counter()
    try:
        entry = convert_folder(args.src, args.out, split=args.split, shard_size=args.shard_size,
                               overwrite=args.overwrite, **engine_kwargs(args))
    except ValueError as e:
        print(f"mawstron data from-folder: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # unreadable source, full disk: the old shards of the split are untouched
        print(f"mawstron data from-folder: {e}; nothing in {args.out} was replaced", file=sys.stderr)
        return 1
    skipped = f", skipped {entry['skipped']}" if entry["skipped"] else ""
    print(f"wrote {entry['usable']} of {entry['images']} images ({entry['layout']}) in {len(entry['shards'])} "
          f"shards to {args.out}/{args.split}-*.tar{skipped} in {time.perf_counter() - start:.1f} s")
    return 0
