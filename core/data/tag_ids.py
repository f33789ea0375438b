"""Precomputed tag ids: each usable sample's known hashtag indices, one small file per shard beside its index.

``data.resample`` weighs every image of a rank by its known tags (resample.py).  Without these files a rank reads
every sample's metadata at start (about 12M images per rank at 256 ranks on IG-3B: minutes, on every restart);
with them it reads one file per shard.  ``mawstron data tags --shards ... --vocab vocab.json`` writes
``<index>.tags.json`` beside each shard's ``.idx`` (or under ``--index-dir``)::

    {"version": 2, "shard": ..., "stamp": [size, mtime or ETag], "vocab": <fingerprint>, "keys": <sha1 of the
     index's sample keys>, "index": [size, mtime_ns of the index's .idx.json], "validated": true,
     "skipped": {"corrupt_jpeg": 1}, "lengths": [2, 0, 3, ...], "ids": [3, 17, 5, 9, 40, ...]}

(each sample's number of known tags, then all their indices, sample after sample: read straight into arrays).
``index``, ``validated`` and ``skipped`` let a rank start leave the shard's sample index unread: a rank reads one
file per shard at start (each shard's sample count, skips and tag ids) and a shard's sample index only when a
loader first reads that shard (``LazyShardIndex``), as a webdataset reader opens a shard when it gets to it.  A
shard whose index was rebuilt since (its sidecar's size or mtime differ), or whose file lacks these fields (written
before them), has its index read at start, and its tag ids serve if the index's keys still match.
A file written for another vocabulary (``vocab``: a hash of the tags and synonyms) or for another version of the
shard (``stamp``) is refused with the command that rewrites it, since silently mixing it in would change the
draws.  A file written over another sample list of the same shard (``data.validate`` differs, or the loader
re-validated the shard after a bad image, or the index was rebuilt since) is not used: that shard's metadata is
read instead.  The draws are the same either way: the tag ids are exactly what the slow path computes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from functools import lru_cache

import numpy as np

from .shards import ShardIndex, Vocab, _write_atomic, build_index, index_path_for, parse_meta, shard_stamp
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
                                    "index": _sidecar_stat(ix.index_path), "validated": ix.validated,
                                    "skipped": dict(sorted(ix.skipped.items())),
                                    "lengths": [len(t) for t in tags], "ids": [i for t in tags for i in t]},
                                   separators=(",", ":")))
    return {"shard": shard, "samples": len(ix.samples), "skipped": dict(ix.skipped), "path": path,
            "no_known_tag": sum(1 for t in tags if not t)}


def _sidecar_stat(index_path: str) -> list[int] | None:
    """Size and mtime (ns) of the index's ``.idx.json`` sidecar: identifies the sample list a tag ids file was
    written over without reading it (any rebuild of the index rewrites the sidecar)."""
    try:
        st = os.stat(index_path + ".json")
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _fix(path: str, vocab: Vocab) -> str:
    return f"rewrite them with `mawstron data tags --shards ... --vocab {vocab.path}` (or delete {path})"


def _read_checked(path: str, shard: str, vocab: Vocab) -> dict | None:
    """The tag ids file at ``path`` for ``shard`` (None when there is none), refused (ValueError, one line) when it
    is unreadable or written for another vocabulary or another version of the shard."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable tag ids ({e}); rewrite them with `mawstron data tags --shards ... "
                         f"--vocab {vocab.path}`") from None
    if not isinstance(data, dict) or data.get("version") != TAG_IDS_VERSION:
        raise ValueError(f"{path}: not a tag ids file of version {TAG_IDS_VERSION}; {_fix(path, vocab)}")
    if data.get("vocab") != vocab.fingerprint:
        raise ValueError(f"{path} holds tag ids of another (older) vocabulary than data.vocab={vocab.path!r}; "
                         f"{_fix(path, vocab)}")
    if data.get("stamp") != shard_stamp(shard):
        raise ValueError(f"{path} was written for another version of {shard} (size/mtime differ); {_fix(path, vocab)}")
    return data


def _arrays(data: dict, path: str, vocab: Vocab, samples: int | None) -> tuple[np.ndarray, np.ndarray]:
    try:
        lengths, ids = np.asarray(data["lengths"], dtype=np.int64), np.asarray(data["ids"], dtype=np.int64)
    except (KeyError, TypeError, ValueError):
        lengths = ids = None
    if (lengths is None or lengths.ndim != 1 or ids.ndim != 1 or (samples is not None and len(lengths) != samples)
            or int(lengths.sum()) != len(ids) or (len(ids) and (ids.max() >= len(vocab) or ids.min() < 0))):
        raise ValueError(f"{path}: inconsistent tag ids; {_fix(path, vocab)}")
    return lengths, ids


def load_tag_ids(ix: ShardIndex, vocab: Vocab) -> tuple[np.ndarray, np.ndarray] | None:
    """The shard's precomputed tag ids for ``ix.samples`` as ``(lengths, ids)`` (see resample.flatten_tag_sets),
    or None when there is no file or it was written over another sample list.  Raises ValueError (one line,
    with the command that rewrites it) when the file is for another vocabulary or another version of the
    shard."""
    path = tag_ids_path(ix)
    if not path:
        return None
    data = _read_checked(path, ix.path, vocab)
    if data is None or data.get("keys") != keys_digest(ix):
        return None
    return _arrays(data, path, vocab, len(ix.samples))


class LazyShardIndex:
    """A shard that a rank starts on from its tag ids file alone: the sample count, the skipped counts and the tag
    ids come from that file; the sample index (``samples``) is read when first needed, i.e. when a loader first
    reads this shard, and must be the sample list the tag ids were written over."""

    def __init__(self, path: str, index_path: str, tags_path: str, data: dict, tags, *, validate: bool,
                 index_dir: str, vocab_path: str):
        self.path, self.index_path, self.tags_path = path, index_path, tags_path
        self.skipped = Counter(data.get("skipped") or {})
        self.tags, self.keys = tags, data["keys"]
        self.count = len(tags[0])
        self.validate, self.index_dir, self.vocab_path = validate, index_dir, vocab_path
        self._samples = None

    @property
    def samples(self):
        if self._samples is None:
            ix = build_index(self.path, validate=self.validate, index_dir=self.index_dir)
            if len(ix.samples) != self.count or keys_digest(ix) != self.keys:
                raise ValueError(f"{self.tags_path} was written over another sample list than the index of "
                                 f"{self.path} holds now (the index was rebuilt after the rank started); rewrite "
                                 f"them with `mawstron data tags --shards ... --vocab {self.vocab_path}` (or delete "
                                 f"{self.tags_path})")
            self._samples = ix.samples
        return self._samples

    @property
    def loaded(self) -> bool:
        """Whether the sample index has been read (in this process)."""
        return self._samples is not None

    def __getstate__(self):  # DataLoader workers read their own shards' indexes
        return {**self.__dict__, "_samples": None}


def lazy_shard_index(shard: str, vocab: Vocab, *, validate: bool, index_dir: str = "") -> LazyShardIndex | None:
    """``shard`` from its tag ids file alone, when that file holds the counts a start needs (``mawstron data tags``
    of this version), was written over a ``validate``-compatible index and that index is still the one on disk
    (same sidecar size and mtime); else None (the caller reads the index).  Refuses a file of another vocabulary
    or another version of the shard as load_tag_ids does."""
    index_path = index_path_for(shard, index_dir)
    path = index_path + SUFFIX
    data = _read_checked(path, shard, vocab)
    if data is None or "index" not in data or "keys" not in data or (validate and not data.get("validated")):
        return None
    if data["index"] is None or data["index"] != _sidecar_stat(index_path):
        return None
    tags = _arrays(data, path, vocab, None)
    if not len(tags[0]):
        return None
    return LazyShardIndex(shard, index_path, path, data, tags, validate=validate, index_dir=index_dir,
                          vocab_path=vocab.path)
