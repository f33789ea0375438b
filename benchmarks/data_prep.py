"""Data preparation rates: the vocab job on 1 process, the local engine and Ray; a rank's start with
``data.resample=sqrt`` with and without precomputed tag ids.

    python benchmarks/data_prep.py --out benchmarks/results/data_prep_cpu.json

Writes a synthetic collection (``--images`` 16 px images in shards of ``--shard-size``) into a temporary folder,
then times, best of ``--repeats``:

* ``vocab``: ``mawstron data vocab``'s job (every sample's tar header, JPEG markers and metadata) with the local
  engine on 1 process (in this process), on ``--workers`` processes, and with Ray on a local Ray of ``--workers``
  CPUs (the Ray start-up is timed apart); images/s, and whether the three vocab.json files are byte-identical.
  The job goes over the shard list ``--vocab-passes`` times (4: 48,000 images), so that it runs long enough for
  the fixed cost of starting worker processes (tens of milliseconds) not to decide the ratio;
* ``rank_start``: building one rank's training loader (world size 1: every shard) with ``data.resample=sqrt``,
  indexes already cached, without tag ids (every sample's metadata read) and with them (``mawstron data tags``:
  one file per shard); the draws must be identical.

The rank start is timed twice: ``warm`` (every file in the page cache) and ``cold`` (the shards, their index
sidecars and the tag id files dropped from the page cache with ``posix_fadvise(DONTNEED)`` before each repeat, as
on a fresh node or a network file system; object storage adds a round trip per read on top).

``--parts rank_start`` measures only the rank start (seconds, no Ray) and keeps the ``vocab`` section of an
existing ``--out`` file, marked with the date, commit and load it was measured at (``vocab.measured``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time

from mawstron.core.data import DataConfig
from mawstron.core.data.jobs import default_workers, tag_ids_job, vocab_job
from mawstron.core.data.shards import build_index, expand_shards, load_synonyms
from mawstron.core.data.synth import synthesize
from mawstron.core.data.torch_loader import TorchShardLoader
from mawstron.parallel.launcher.bench import git_commit


def best_of(repeats: int, fn):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def drop_from_page_cache(folder: str) -> None:
    """Evict this collection's files (only these) from the page cache, so the next reads go to the disk."""
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=12000)
    p.add_argument("--shard-size", type=int, default=120, help="samples per shard (12000 / 120: 100 shards)")
    p.add_argument("--workers", type=int, default=0, help="local processes and Ray CPUs (0: every core)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vocab-passes", type=int, default=4, help="times the vocab job goes over the shard list")
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--parts", default="vocab,rank_start", help="comma-separated: vocab, rank_start")
    p.add_argument("--note", default="", help="recorded in the JSON (e.g. whether the machine was idle)")
    p.add_argument("--out", default="benchmarks/results/data_prep_cpu.json")
    args = p.parse_args(argv)
    parts = set(args.parts.split(","))
    if not parts or parts - {"vocab", "rank_start"}:
        p.error(f"--parts takes vocab and/or rank_start, got {args.parts!r}")
    workers = args.workers or default_workers()
    root = tempfile.mkdtemp(prefix="mawstron-bench-data-")
    try:
        t0 = time.perf_counter()
        synthesize(root, images=args.images, size=16, shard_size=args.shard_size, eval_images=0, workers=workers)
        shards = expand_shards(f"{root}/train-*.tar")
        synonyms = load_synonyms(f"{root}/synonyms.json")
        print(f"collection: {args.images} images in {len(shards)} shards ({time.perf_counter() - t0:.1f} s)",
              file=sys.stderr)
        vocab_job(shards, min_count=2, synonyms=synonyms, workers=1)  # warm the page cache
        results = {}
        if "vocab" in parts:
            results["vocab"] = measure_vocab(args, shards, synonyms, workers)
        with open(f"{root}/vocab.json", "w") as f:
            f.write(json.dumps(vocab_job(shards, min_count=2, synonyms=synonyms, workers=1), indent=1))
        if "rank_start" in parts:
            results["rank_start"] = measure_rank_start(args, root, shards, workers)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load = os.getloadavg()
    report = {"benchmark": "data_prep", "device": f"cpu ({platform.processor() or platform.machine()})",
              "cores": default_workers(), "load_average_1_5_15": [round(x, 2) for x in load],
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "commit": git_commit(), "note": args.note}
    if "vocab" not in parts and os.path.isfile(args.out):  # keep the earlier measurement, with its provenance
        with open(args.out) as f:
            old = json.load(f)
        if "vocab" in old:
            results["vocab"] = {**old["vocab"], "measured": old["vocab"].get("measured") or {
                k: old.get(k) for k in ("date", "commit", "load_average_1_5_15", "note")}}
    report.update({k: results[k] for k in ("vocab", "rank_start") if k in results})
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))
    return 0


def measure_vocab(args, shards, synonyms, workers) -> dict:
    """``data vocab``'s job on 1 process, the local engine and Ray (see the module docstring)."""
    job = shards * args.vocab_passes
    images = args.images * args.vocab_passes

    def vocab(**engine):
        return json.dumps(vocab_job(job, min_count=2, synonyms=synonyms, **engine), indent=1)

    t1, v1 = best_of(args.repeats, lambda: vocab(workers=1))
    tn, vn = best_of(args.repeats, lambda: vocab(workers=workers))
    out = {"images": images, "shards": len(job), "passes": args.vocab_passes,
           "one_process": {"s": round(t1, 3), "images_per_s": round(images / t1)},
           "local_engine": {"workers": workers, "s": round(tn, 3), "images_per_s": round(images / tn),
                            "speedup": round(t1 / tn, 2)},
           "identical_local": v1 == vn}
    if not args.no_ray:
        import ray

        start = time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - start
        try:
            vocab(engine="ray")  # the workers' first task imports mawstron
            tr, vr = best_of(args.repeats, lambda: vocab(engine="ray"))
        finally:
            ray.shutdown()
        out["ray"] = {"cpus": workers, "s": round(tr, 3), "images_per_s": round(images / tr),
                      "speedup": round(t1 / tr, 2), "ray_init_s": round(ray_start, 2)}
        out["identical_ray"] = v1 == vr
    return out


def measure_rank_start(args, root, shards, workers) -> dict:
    """One rank's loader start with ``data.resample=sqrt``, without and with tag ids, warm and cold."""
    for shard in shards:
        build_index(shard, validate=True)  # cached indexes: both starts below only differ in the tag ids
    cfg = DataConfig(source="shards", shards=f"{root}/train-*.tar", vocab=f"{root}/vocab.json", loader="torch",
                     num_workers=0, resample="sqrt")

    def rank_start(cold: bool):
        def start():
            ld = TorchShardLoader(cfg, stage="wsp", img_size=16, micro_batch=8, seed=0)
            return ld.draws.fingerprint(), ld.shards.tag_ids_used

        if not cold:
            return best_of(args.repeats, start)
        times = []
        for _ in range(args.repeats):
            drop_from_page_cache(root)
            t, result = best_of(1, start)
            times.append(t)
        return min(times), result

    slow = {k: rank_start(k == "cold") for k in ("warm", "cold")}
    start = time.perf_counter()
    tag_ids_job(shards, vocab_path=f"{root}/vocab.json", workers=workers)
    tags_s = time.perf_counter() - start
    fast = {k: rank_start(k == "cold") for k in ("warm", "cold")}
    out = {"shards": len(shards), "images": args.images, "repeats": args.repeats, "data_tags_job_s": round(tags_s, 3)}
    for k in ("warm", "cold"):
        (t_slow, (draw_slow, used_slow)), (t_fast, (draw_fast, used_fast)) = slow[k], fast[k]
        out[k] = {"without_tag_ids_s": round(t_slow, 4), "with_tag_ids_s": round(t_fast, 4),
                  "speedup": round(t_slow / t_fast, 1), "identical_draws": draw_slow == draw_fast,
                  "tag_id_files_used": [used_slow, used_fast]}
    return out


if __name__ == "__main__":
    sys.exit(main())
