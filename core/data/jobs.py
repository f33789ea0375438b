"""The one-off data jobs (vocabulary, DALI indexes, precomputed tag ids, statistics, folder conversion) as
per-shard tasks on an engine.

* ``local`` (the default): plain processes on this machine (``workers``: 0 = every core, 1 = this process);
* ``ray``: Ray tasks (ray_engine.py; the ``data`` extra), on a local Ray or on a cluster named by ``ray_address``
  or ``RAY_ADDRESS``.

Each job maps a module-level function over its shards and combines the results in shard order, so the output
does not depend on the engine or the number of workers (vocab.json is byte-identical).  Progress goes to stderr
(images/s) when stderr is a terminal.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections import Counter
from functools import partial

from .resample import shard_tag_sets
from .shards import build_index, shard_hashtags, vocab_from_counts
from .tag_ids import write_shard_tag_ids

ENGINES = ("local", "ray")


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class Progress:
    """``what: k/N shards, I images, R images/s`` on stderr, only when it is a terminal."""

    def __init__(self, what: str, total: int, stream=None):
        self.stream = stream or sys.stderr
        self.on = self.stream.isatty()
        self.what, self.total, self.done, self.images = what, total, 0, 0
        self.start = time.perf_counter()

    def update(self, result) -> None:
        """One shard finished with ``result`` (a task's return value, from which its image count is read)."""
        self.done += 1
        self.images += _images_of(result)
        if self.on:
            rate = self.images / max(time.perf_counter() - self.start, 1e-9)
            self.stream.write(f"\r{self.what}: {self.done}/{self.total} shards, {self.images} images, "
                              f"{rate:,.0f} images/s")
            self.stream.flush()
            if self.done == self.total:
                self.stream.write("\n")


def _images_of(result) -> int:
    if isinstance(result, dict):
        return int(result.get("samples", 0))
    if isinstance(result, tuple) and len(result) == 3 and isinstance(result[2], int):
        return result[2]
    if isinstance(result, list):
        return len(result)
    return 0


def run_tasks(fn, items: list, *, engine: str = "local", workers: int = 0, ray_address: str = "",
              what: str = "") -> list:
    """``[fn(item) for item in items]`` in order, on ``engine``.  ``fn`` must be picklable (a module-level
    function or a ``functools.partial`` of one)."""
    if engine not in ENGINES:
        raise ValueError(f"--engine must be one of {ENGINES}, got {engine!r}")
    progress = Progress(what or getattr(fn, "__name__", "job"), len(items))
    if engine == "ray":
        from . import ray_engine  # Ray is imported only here: `mawstron --help` and make demo never load it

        return ray_engine.run_tasks(fn, items, workers=workers, address=ray_address, progress=progress)
    if workers < 0:
        raise ValueError(f"--workers must be >= 0 (0: every core), got {workers}")
    workers = min(workers or default_workers(), max(len(items), 1))
    out = []
    if workers == 1:
        for item in items:
            out.append(fn(item))
            progress.update(out[-1])
        return out
    # fork: the workers start in milliseconds with the modules already imported
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for result in pool.imap(fn, items, chunksize=1):
            out.append(result)
            progress.update(result)
    return out


def vocab_job(shards: list[str], *, min_count: int, synonyms: dict[str, str], **engine) -> dict:
    """vocab.json's content (see shards.vocab_from_counts), counted per shard on the engine."""
    counts, skipped = Counter(), Counter()
    for c, bad, _ in run_tasks(partial(shard_hashtags, synonyms=synonyms), shards, what="vocab", **engine):
        counts.update(c)
        skipped.update(bad)
    return vocab_from_counts(counts, skipped, shards=len(shards), min_count=min_count, synonyms=synonyms)


def index_shard(shard: str, *, validate: bool, index_dir: str, force: bool) -> dict:
    ix = build_index(shard, validate=validate, index_dir=index_dir, force=force)
    return {"shard": shard, "samples": len(ix.samples), "skipped": dict(ix.skipped), "path": ix.index_path}


def index_job(shards: list[str], *, validate: bool = True, index_dir: str = "", force: bool = False,
              **engine) -> list[dict]:
    return run_tasks(partial(index_shard, validate=validate, index_dir=index_dir, force=force), shards,
                     what="index", **engine)


def tag_ids_job(shards: list[str], *, vocab_path: str, validate: bool = True, index_dir: str = "",
                **engine) -> list[dict]:
    return run_tasks(partial(write_shard_tag_ids, vocab_path=os.path.abspath(vocab_path), validate=validate,
                             index_dir=index_dir), shards, what="tags", **engine)


def tag_sets_job(shards: list[str], *, vocab_path: str, **engine) -> list[list[int]]:
    per_shard = run_tasks(partial(shard_tag_sets, vocab_path=os.path.abspath(vocab_path)), shards, what="stats",
                          **engine)
    return [t for tags in per_shard for t in tags]
