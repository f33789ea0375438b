"""Precomputed tag ids: each usable sample's known hashtag indices, one small file per shard beside its index.

``data.resample`` weighs every image of a rank by its known tags (resample.py).  Without these files a rank reads
every sample's metadata at start (about 12M images per rank at 256 ranks on IG-3B: minutes, on every restart);
with them it reads one file per shard.  ``mawstron data tags --shards ... --vocab vocab.json`` writes
``<index>.tags.json`` beside each shard's ``.idx`` (or under ``--index-dir``)::

    {"version": 1, "shard": ..., "stamp": [size, mtime or ETag], "vocab": <fingerprint>, "keys": [...],
     "tags": [[3, 17], [], ...]}

A rank uses a file only if it belongs to the same shard version (``stamp``) and the same vocabulary
(``vocab``: a hash of the tags and synonyms); a file written for another vocabulary is refused with the command
that rewrites it, since silently mixing it in would change the draws.  Tags are looked up by sample key, so a
file written over a larger index (``--no-validate``) serves a validated one.  The draws are the same either way:
the tag ids are exactly what the slow path computes.
"""

from __future__ import annotations

import json
from functools import lru_cache

from .shards import ShardIndex, Vocab, _write_atomic, build_index, parse_meta, shard_stamp
from .storage import open_shard

TAG_IDS_VERSION = 1
SUFFIX = ".tags.json"


def tag_ids_path(ix: ShardIndex) -> str:
    return ix.index_path + SUFFIX if ix.index_path else ""


@lru_cache(maxsize=4)
def _vocab(path: str) -> Vocab:
    return Vocab(path)


def scan_tag_ids(ix: ShardIndex, vocab: Vocab) -> list[list[int]]:
    """The slow path: read every sample's metadata."""
    if not ix.samples:
        return []
    out = []
    with open_shard(ix.path) as f:
        for s in ix.samples:
            f.seek(s.meta[0])
            out.append(vocab.indices(parse_meta(f.read(s.meta[1]), s.meta_ext)))
    return out


def write_shard_tag_ids(shard: str, vocab_path: str, *, validate: bool = True, index_dir: str = "") -> dict:
    """Index ``shard`` (cached) and write its tag ids file; the task ``mawstron data tags`` runs per shard."""
    vocab = _vocab(vocab_path)
    ix = build_index(shard, validate=validate, index_dir=index_dir)
    if not ix.samples:
        return {"shard": shard, "samples": 0, "skipped": dict(ix.skipped), "path": ""}
    tags = scan_tag_ids(ix, vocab)
    path = tag_ids_path(ix)
    _write_atomic(path, json.dumps({"version": TAG_IDS_VERSION, "shard": shard, "stamp": shard_stamp(shard),
                                    "vocab": vocab.fingerprint, "vocab_path": vocab_path,
                                    "keys": [s.key for s in ix.samples], "tags": tags}, separators=(",", ":")))
    return {"shard": shard, "samples": len(ix.samples), "skipped": dict(ix.skipped), "path": path,
            "no_known_tag": sum(1 for t in tags if not t)}


def load_tag_ids(ix: ShardIndex, vocab: Vocab) -> list[list[int]] | None:
    """The shard's precomputed tag ids in ``ix.samples`` order, or None when there is no file.  Raises
    ValueError (one line, with the command that rewrites it) when the file is for another vocabulary or
    another version of the shard."""
    path = tag_ids_path(ix)
    if not path:
        return None
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable tag ids ({e}); rewrite them with `mawstron data tags --shards ... "
                         f"--vocab {vocab.path}`") from None
    fix = f"rewrite them with `mawstron data tags --shards ... --vocab {vocab.path}` (or delete {path})"
    if not isinstance(data, dict) or data.get("version") != TAG_IDS_VERSION:
        raise ValueError(f"{path}: not a tag ids file of version {TAG_IDS_VERSION}; {fix}")
    if data.get("vocab") != vocab.fingerprint:
        raise ValueError(f"{path} holds tag ids of another (older) vocabulary than data.vocab={vocab.path!r}; {fix}")
    if data.get("stamp") != shard_stamp(ix.path):
        raise ValueError(f"{path} was written for another version of {ix.path} (size/mtime differ); {fix}")
    keys, tags = data.get("keys") or [], data.get("tags") or []
    if len(keys) == len(ix.samples) and keys == [s.key for s in ix.samples]:
        return tags
    by_key = dict(zip(keys, tags))
    try:
        return [by_key[s.key] for s in ix.samples]
    except KeyError as e:
        raise ValueError(f"{path} has no tag ids for sample {e.args[0]!r} of {ix.path}; {fix}") from None
