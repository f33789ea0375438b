"""Precomputed tag ids: each usable sample's known hashtag indices, one small file per shard beside its index.

``data.resample`` weighs every image of a rank by its known tags (resample.py).  Without these files a rank reads
every sample's metadata at start (about 12M images per rank at 256 ranks on IG-3B: minutes, on every restart);
with them it reads one file per shard.  ``mawstron data tags --shards ... --vocab vocab.json`` writes
``<index>.tags.json`` beside each shard's ``.idx`` (or under ``--index-dir``)::

    {"version": 2, "shard": ..., "stamp": [size, mtime or ETag], "vocab": <fingerprint>, "keys": <sha1 of the
     index's sample keys>, "lengths": [2, 0, 3, ...], "ids": [3, 17, 5, 9, 40, ...]}

(each sample's number of known tags, then all their indices, sample after sample: read straight into arrays).
A file written for another vocabulary (``vocab``: a hash of the tags and synonyms) or for another version of the
shard (``stamp``) is refused with the command that rewrites it, since silently mixing it in would change the
draws.  A file written over another sample list of the same shard (``data.validate`` differs, or the loader
re-validated the shard after a bad image) is not used: that shard's metadata is read instead.  The draws are the
same either way: the tag ids are exactly what the slow path computes.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache

import numpy as np

from .shards import ShardIndex, Vocab, _write_atomic, build_index, parse_meta, shard_stamp
from .storage import open_shard

TAG_IDS_VERSION = 2
SUFFIX = ".tags.json"


def tag_ids_path(ix: ShardIndex) -> str:
    return ix.index_path + SUFFIX if ix.index_path else ""


@lru_cache(maxsize=4)
def _vocab(path: str) -> Vocab:
    return Vocab(path)


def keys_digest(ix: ShardIndex) -> str:
    return hashlib.sha1("\n".join(s.key for s in ix.samples).encode()).hexdigest()


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
                                    "vocab": vocab.fingerprint, "vocab_path": vocab_path, "keys": keys_digest(ix),
                                    "lengths": [len(t) for t in tags], "ids": [i for t in tags for i in t]},
                                   separators=(",", ":")))
    return {"shard": shard, "samples": len(ix.samples), "skipped": dict(ix.skipped), "path": path,
            "no_known_tag": sum(1 for t in tags if not t)}


def load_tag_ids(ix: ShardIndex, vocab: Vocab) -> tuple[np.ndarray, np.ndarray] | None:
    """The shard's precomputed tag ids for ``ix.samples`` as ``(lengths, ids)`` (see resample.flatten_tag_sets),
    or None when there is no file or it was written over another sample list.  Raises ValueError (one line,
    with the command that rewrites it) when the file is for another vocabulary or another version of the
    shard."""
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
    if data.get("keys") != keys_digest(ix):
        return None
    lengths, ids = np.asarray(data["lengths"], dtype=np.int64), np.asarray(data["ids"], dtype=np.int64)
    if len(lengths) != len(ix.samples) or int(lengths.sum()) != len(ids) or (len(ids) and ids.max() >= len(vocab)):
        raise ValueError(f"{path}: inconsistent tag ids; {fix}")
    return lengths, ids
