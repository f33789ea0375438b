"""Webdataset tar shards as img2dataset writes them: listing, indexing (DALI's wds2idx format), validation, tags.

A sample is the members of one tar that share a key: ``KEY.jpg`` plus ``KEY.json`` (``{"hashtags": [...]}``,
``{"caption": "... #tag"}`` or ``{"label": 3}``) or ``KEY.txt`` (a caption with ``#tags``).

Every shard gets an index file in DALI's ``wds2idx`` v1.2 format (``<shard>.idx``, beside the shard or under
``index_dir``) listing only the samples that are usable, plus a JSON sidecar (``<shard>.idx.json``) with the
per-sample keys and the count of samples left out and why.  Both loaders (DALI and PyTorch) read through the
same index, so both skip exactly the same bad samples:

* ``corrupt_jpeg``: no JPEG start/end markers, or (``validate=True``) PIL cannot decode it;
* ``missing_json``: an image without its ``.json``/``.txt``;
* ``missing_image``: metadata without an image;
* ``truncated_shard``: the tar ends inside a member (the samples before the cut are kept);
* ``unreadable_shard``: the file cannot be opened or is not a tar;
* ``bad_json``: the ``.json`` does not parse (any error: bad UTF-8, bad syntax, nesting too deep to parse);
* ``bad_name``: the sample's key holds whitespace or a control character, which the ``.idx`` line format (fields
  separated by spaces, one sample per line) cannot carry: the sample is left out rather than mis-indexed.

Shards may be local files or ``s3://`` / ``https://`` objects (storage.py); the index files of remote shards
live under ``data.index_dir`` (or a private temporary folder).
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .storage import filesystem, is_remote, open_shard, private_dir, read_range, shard_size, shard_stamp

IMAGE_EXTS = ("jpg", "jpeg")
META_EXTS = ("json", "txt", "cls")  # .cls: an integer class label (ImageNet-1k webdataset shards)
INDEX_VERSION = "v1.2"
SIDECAR_VERSION = 1
SYNTH_HINT = "create a synthetic collection with `mawstron data synth --out DIR` and pass data.shards=DIR/train-*.tar"
SKIP_REASONS = ("corrupt_jpeg", "missing_json", "missing_image", "bad_json", "bad_name", "truncated_shard",
                "unreadable_shard", "decode_error")
_HASHTAG = re.compile(r"#(\w+)", re.UNICODE)


# ------------------------------------------------------------------------------------------------ listing
def _expand_braces(pattern: str) -> list[str]:
    """``a-{000..003}.tar`` -> 4 names; ``{a,b}`` alternatives; nested left to right."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    head, body, tail = pattern[: m.start()], m.group(1), pattern[m.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo) if lo.startswith("0") else 0
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    return [p for o in options for p in _expand_braces(head + o + tail)]


def expand_shards(spec: str, what: str = "data.shards", *, check_remote: bool = True) -> list[str]:
    """The shard files named by ``spec``: a glob, a brace pattern or a comma-separated list of those.

    Raises ValueError naming the pattern and the fix when nothing matches or a listed file is missing.
    ``check_remote=False`` expands an ``s3://`` / ``https://`` brace pattern without asking the store whether
    each object exists (the ranks of a run, after ``mawstron train`` checked it once: 256 ranks listing 300,000
    objects each would only load the store; a shard gone since is counted as ``unreadable_shard``)."""
    if not spec or not spec.strip():
        raise ValueError(f"{what} is empty: name webdataset tar shards (a glob such as DIR/train-*.tar); "
                         f"{SYNTH_HINT}")
    out: list[str] = []
    for part in [p.strip() for p in spec.split(",") if p.strip()] if "{" not in spec else [spec.strip()]:
        if is_remote(part):
            names = _expand_braces(part)
            out.extend(names if not check_remote and not any(c in part for c in "*?[")
                       else _expand_remote(part, spec, what))
            continue
        for name in _expand_braces(part):
            if any(c in name for c in "*?["):
                matches = sorted(glob.glob(name))
                if not matches:
                    raise ValueError(f"{what}={spec!r}: no file matches {name!r}; {SYNTH_HINT}")
                out.extend(matches)
            elif not os.path.exists(name):
                raise ValueError(f"{what}={spec!r}: {name!r} does not exist; {SYNTH_HINT}")
            elif os.path.isdir(name):
                raise ValueError(f"{what}={spec!r}: {name!r} is a folder; name its shards, e.g. {name}/train-*.tar")
            else:
                out.append(name)
    return list(dict.fromkeys(out))


def _expand_remote(part: str, spec: str, what: str) -> list[str]:
    """The objects of one ``s3://`` / ``https://`` brace pattern (s3 also takes globs), each checked to exist:
    S3 by listing each prefix once, HTTP by one HEAD request per URL.  One line naming the first missing object
    (a hole in a brace range, a missing bucket, a refused access) when any is missing."""
    names = _expand_braces(part)
    protocol = part.split("://", 1)[0]
    fs = filesystem(part)
    try:
        if protocol == "s3":
            found: list[str] = []
            for name in names:
                if any(c in name for c in "*?["):
                    matches = sorted(f"s3://{m}" for m in fs.glob(name))
                    if not matches:
                        raise ValueError(f"{what}={spec!r}: no object matches {name!r}")
                    found.extend(matches)
                else:
                    found.append(name)
            listings: dict[str, set] = {}
            for name in found:
                folder = name[len("s3://"):].rsplit("/", 1)[0]
                if folder not in listings:
                    listings[folder] = set(fs.ls(folder, detail=False, refresh=True))
            missing = [n for n in found if n[len("s3://"):] not in listings[n[len("s3://"):].rsplit("/", 1)[0]]]
            names = found
        else:
            if any(c in part for c in "*?["):
                raise ValueError(f"{what}={spec!r}: {protocol}:// shards are named by a brace pattern such as "
                                 f"https://host/path/train-{{000000..000119}}.tar, not a glob")
            def absent(url: str) -> bool:  # a HEAD request; errors other than "not found" are raised
                try:
                    fs.info(url)
                    return False
                except FileNotFoundError as e:  # fsspec says "not found" for a refused connection too
                    cause = e.__cause__
                    status = getattr(cause, "status", None)
                    if status in (401, 403):
                        raise PermissionError(f"{url}: HTTP {status}") from None
                    if cause is not None and not isinstance(cause, FileNotFoundError) and status not in (404, 410):
                        raise OSError(f"{type(cause).__name__}: {cause}") from None
                    return True

            with ThreadPoolExecutor(8) as pool:
                missing = [n for n, gone in zip(names, pool.map(absent, names)) if gone]
    except FileNotFoundError as e:
        raise ValueError(f"{what}={spec!r}: not found ({str(e).splitlines()[0][:200] if str(e) else 'no such bucket'}"
                         f"): check the bucket and prefix (and AWS_ENDPOINT_URL for an S3-compatible store)") from None
    except PermissionError as e:
        raise ValueError(f"{what}={spec!r}: access refused ({str(e).splitlines()[0][:200]}); check the credentials "
                         f"(AWS_ACCESS_KEY_ID / AWS_PROFILE) and the bucket policy") from None
    except (OSError, RuntimeError) as e:  # connection refused, DNS, timeouts (aiohttp/botocore)
        raise ValueError(f"{what}={spec!r}: cannot reach {protocol}:// storage ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''}); check the URL"
                         f"{' and AWS_ENDPOINT_URL' if protocol == 's3' else ''}") from None
    if missing:
        hole = ", a hole in the brace range" if ".." in part and len(missing) < len(names) else ""
        raise ValueError(f"{what}={spec!r}: {missing[0]!r} does not exist ({len(missing)} of {len(names)} named "
                         f"objects missing{hole}); fix the pattern or upload the missing shards")
    return names


def assign_shards(shards: list[str], rank: int, world_size: int) -> tuple[list[str], int, int]:
    """This rank's part: ``(paths, sub_rank, sub_world)``.  With at least as many shards as ranks each rank
    reads its own shards (``shards[rank::world_size]``, then ``(0, 1)``: all their samples); with fewer, every
    rank reads all shards and keeps every ``world_size``-th sample from ``rank`` on."""
    if world_size <= 0 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    if len(shards) >= world_size:
        return shards[rank::world_size], 0, 1
    return list(shards), rank, world_size


# ------------------------------------------------------------------------------------------------ tar
class TruncatedShard(Exception):
    pass


def _parse_octal(field: bytes) -> int:
    field = field.rstrip(b"\0 ").strip()
    if not field:
        return 0
    if field[0] & 0x80:  # GNU base-256
        return int.from_bytes(field[1:], "big")
    return int(field, 8)


def tar_members(path: str):
    """Yield ``(name, data_offset, size)`` of each regular file in ``path`` (a plain, uncompressed tar).

    Raises TruncatedShard (after yielding what came before) if the file ends inside a member, ValueError if it
    is not a tar at all."""
    file_size = shard_size(path)
    with open_shard(path) as f:
        offset, long_name, first = 0, None, True
        while True:
            f.seek(offset)
            header = f.read(512)
            if len(header) < 512:
                if first:
                    raise ValueError("not a tar file (shorter than one header)")
                raise TruncatedShard(f"ends inside a header at byte {offset}")
            if header == b"\0" * 512:
                return
            checksum = _parse_octal(header[148:156]) if header[148:156].strip(b"\0 ") else -1
            actual = sum(header[:148]) + 8 * 32 + sum(header[156:])
            if checksum != actual:
                if first:
                    raise ValueError("not a tar file (bad header checksum)")
                raise TruncatedShard(f"bad header at byte {offset}")
            first = False
            size = _parse_octal(header[124:136])
            kind = header[156:157]
            name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") if header[257:262] == b"ustar" else ""
            if prefix:
                name = f"{prefix}/{name}"
            data_offset = offset + 512
            if data_offset + size > file_size:
                raise TruncatedShard(f"member {name!r} needs {size} bytes at {data_offset}, file has {file_size}")
            if kind == b"L":  # GNU long name for the next member
                f.seek(data_offset)
                long_name = f.read(size).split(b"\0", 1)[0].decode("utf-8", "replace")
            elif kind in (b"0", b"\0", b"7"):
                yield (long_name or name), data_offset, size
                long_name = None
            else:  # directories, pax headers, links: not sample data
                long_name = None if kind != b"x" else long_name
            offset = data_offset + (size + 511) // 512 * 512


def split_key(name: str) -> tuple[str, str]:
    """``dir/000123.jpg`` -> (``dir/000123``, ``jpg``); webdataset's rule: the extension starts at the first dot
    of the file name."""
    directory, base = os.path.split(name)
    if "." not in base:
        return name, ""
    stem, ext = base.split(".", 1)
    return os.path.join(directory, stem) if directory else stem, ext.lower()


def index_safe_key(key: str) -> bool:
    """A key the ``.idx`` line format can carry: no whitespace, no control character."""
    return bool(key) and not any(c.isspace() or not c.isprintable() for c in key)


def looks_like_jpeg(data: bytes) -> bool:
    """Start-of-image marker at the front and end-of-image marker at the end (allowing trailing padding)."""
    return len(data) > 4 and data[:3] == b"\xff\xd8\xff" and b"\xff\xd9" in data[-64:]


def decodes_with_pil(data: bytes) -> bool:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return True
    except Exception:
        return False


# ------------------------------------------------------------------------------------------------ index
@dataclass
class Sample:
    key: str
    image: tuple[int, int]  # (offset, size)
    meta_ext: str
    meta: tuple[int, int]


@dataclass
class ShardIndex:
    path: str
    index_path: str
    samples: list[Sample] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    validated: bool = False  # every image decoded with PIL when the index was built

    @property
    def count(self) -> int:
        return len(self.samples)


def index_path_for(shard: str, index_dir: str = "") -> str:
    if index_dir:
        digest = hashlib.sha1((shard if is_remote(shard) else os.path.abspath(shard)).encode()).hexdigest()[:10]
        return os.path.join(index_dir, f"{os.path.basename(shard)}.{digest}.idx")
    if is_remote(shard):  # never beside a remote object: a private local folder
        return index_path_for(shard, private_dir("index"))
    return shard + ".idx"


def _scan(path: str, validate: bool) -> tuple[list[Sample], Counter]:
    skipped: Counter = Counter()
    groups: dict[str, dict[str, tuple[int, int]]] = {}
    order: list[str] = []
    try:
        for name, off, size in tar_members(path):
            key, ext = split_key(name)
            if not ext or os.path.basename(key).startswith("."):
                continue
            if key not in groups:
                groups[key] = {}
                order.append(key)
            groups[key][ext] = (off, size)
    except TruncatedShard:
        skipped["truncated_shard"] += 1
        if order:  # the last sample may be incomplete: drop it rather than trust it
            groups.pop(order.pop())
    except (OSError, ValueError):
        skipped["unreadable_shard"] += 1
        return [], skipped
    samples = []
    with open_shard(path) as f:
        for key in order:
            parts = groups[key]
            if not index_safe_key(key):
                skipped["bad_name"] += 1
                continue
            image_ext = next((e for e in IMAGE_EXTS if e in parts), None)
            meta_ext = next((e for e in META_EXTS if e in parts), None)
            if image_ext is None:
                skipped["missing_image"] += 1
                continue
            if meta_ext is None:
                skipped["missing_json"] += 1
                continue
            off, size = parts[image_ext]
            f.seek(off)
            if validate or size <= 128:
                data = f.read(size)
            else:  # the marker check needs the first 3 and the last 64 bytes, not the whole image
                head = f.read(3)
                f.seek(off + size - 64)
                data = head + f.read(64)
            if not looks_like_jpeg(data) or (validate and not decodes_with_pil(data)):
                skipped["corrupt_jpeg"] += 1
                continue
            if meta_ext == "json":
                f.seek(parts["json"][0])
                try:
                    json.loads(f.read(parts["json"][1]).decode("utf-8"))
                except Exception:  # bad UTF-8 or syntax, RecursionError from deep nesting: this sample's error
                    skipped["bad_json"] += 1
                    continue
            samples.append(Sample(key, parts[image_ext], meta_ext, parts[meta_ext]))
    return samples, skipped


def _write_atomic(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _index_text(samples: list[Sample], image_ext_of: dict[str, str]) -> str:
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    for s in samples:
        img_ext = image_ext_of.get(s.key, "jpg")
        lines.append(f"{img_ext} {s.image[0]} {s.image[1]} {s.key}.{img_ext} "
                     f"{s.meta_ext} {s.meta[0]} {s.meta[1]} {s.key}.{s.meta_ext}")
    return "\n".join(lines) + "\n"


def build_index(shard: str, *, validate: bool = True, index_dir: str = "", force: bool = False) -> ShardIndex:
    """The shard's usable samples and what was left out; cached in ``<shard>.idx`` + ``.idx.json`` (rebuilt
    when the shard's size or mtime changed, or when a validated index is asked for and the cache is not)."""
    idx = index_path_for(shard, index_dir)
    sidecar = idx + ".json"
    try:
        stamp = shard_stamp(shard)
    except OSError:
        return ShardIndex(shard, "", [], Counter(unreadable_shard=1))
    if not force and os.path.exists(idx) and os.path.exists(sidecar):
        try:
            with open(sidecar) as f:
                meta = json.load(f)
            if (meta.get("version") == SIDECAR_VERSION and meta.get("stamp") == stamp
                    and (meta.get("validated") or not validate)):
                samples = [Sample(k, tuple(i), e, tuple(m)) for k, i, e, m in meta["samples"]]
                return ShardIndex(shard, idx, samples, Counter(meta["skipped"]), bool(meta.get("validated")))
        except (OSError, ValueError, KeyError, TypeError):
            pass
    samples, skipped = _scan(shard, validate)
    if not samples:
        return ShardIndex(shard, "", [], skipped)
    try:
        _write_atomic(idx, _index_text(samples, {}))
        _write_atomic(sidecar, json.dumps({
            "version": SIDECAR_VERSION, "shard": shard if is_remote(shard) else os.path.abspath(shard),
            "stamp": stamp, "validated": validate,
            "skipped": dict(skipped), "samples": [[s.key, list(s.image), s.meta_ext, list(s.meta)] for s in samples],
        }))
    except OSError:  # read-only data folder: index into this process's private folder instead
        if not index_dir:
            return build_index(shard, validate=validate, force=force, index_dir=private_dir("index"))
        raise
    return ShardIndex(shard, idx, samples, skipped, validate)


# ------------------------------------------------------------------------------------------------ tags
def read_bytes(path: str, span: tuple[int, int]) -> bytes:
    return read_range(path, span[0], span[1])


def parse_meta(raw: bytes, ext: str) -> dict:
    """The sample's metadata as a dict (a ``.txt`` becomes ``{"caption": text}``)."""
    text = raw.rstrip(b"\0").decode("utf-8", "replace")
    if ext == "txt":
        return {"caption": text}
    if ext == "cls":
        return {"label": int(text.strip())} if text.strip().isdigit() else {}
    try:
        meta = json.loads(text)
    except Exception:  # ValueError, RecursionError: a sample's metadata never takes its reader down
        return {}
    return meta if isinstance(meta, dict) else {}


def raw_hashtags(meta: dict) -> list[str]:
    """Hashtags as written: the json "hashtags" list if present, else the ``#tags`` of the caption."""
    tags = meta.get("hashtags")
    if isinstance(tags, list):
        return [str(t) for t in tags]
    caption = meta.get("caption") or ""
    return _HASHTAG.findall(str(caption))


def canonical(tag: str, synonyms: dict[str, str]) -> str:
    t = tag.strip().lstrip("#").strip().lower()
    return synonyms.get(t, t)


def load_synonyms(path: str) -> dict[str, str]:
    if not path:
        return {}
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a synonyms file maps variant -> canonical tag, e.g. {{\"crimson\": \"red\"}}")
    return {k.lstrip("#").lower(): v.lstrip("#").lower() for k, v in data.items()}


def shard_hashtags(shard: str, synonyms: dict[str, str]) -> tuple[Counter, Counter, int]:
    """One shard's canonical hashtag counts (once per image), what was skipped, and its usable images: the task
    that ``mawstron data vocab`` runs per shard on its engine."""
    counts: Counter = Counter()
    samples, skipped = _scan(shard, validate=False)
    if samples:
        with open_shard(shard) as f:
            for s in samples:
                f.seek(s.meta[0])
                meta = parse_meta(f.read(s.meta[1]), s.meta_ext)
                counts.update({canonical(t, synonyms) for t in raw_hashtags(meta)} - {""})
    return counts, skipped, len(samples)


def count_hashtags(shards: list[str], synonyms: dict[str, str]) -> tuple[Counter, Counter]:
    """Canonical hashtag counts (once per image) over the usable samples of ``shards``, and skipped counts."""
    counts: Counter = Counter()
    skipped: Counter = Counter()
    for shard in shards:
        c, bad, _ = shard_hashtags(shard, synonyms)
        counts.update(c)
        skipped.update(bad)
    return counts, skipped


def vocab_from_counts(counts: Counter, skipped: Counter, *, shards: int, min_count: int,
                      synonyms: dict[str, str]) -> dict:
    """vocab.json's content; depends only on the totals, so every engine and worker count writes the same bytes."""
    kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
    return {"tags": kept, "counts": {t: counts[t] for t in kept}, "synonyms": dict(sorted(synonyms.items())),
            "min_count": min_count, "images_skipped": {r: skipped[r] for r in sorted(skipped) if skipped[r]},
            "shards": shards}


def build_vocab(shards: list[str], *, min_count: int = 1, synonyms: dict[str, str] | None = None) -> dict:
    counts, skipped = count_hashtags(shards, synonyms or {})
    return vocab_from_counts(counts, skipped, shards=len(shards), min_count=min_count, synonyms=synonyms or {})


class Vocab:
    """Hashtag -> class index, from a vocab.json (``mawstron data vocab``)."""

    def __init__(self, path: str):
        if not path:
            raise ValueError("data.vocab is empty: WSP needs a hashtag vocabulary; build one with "
                             "`mawstron data vocab --shards 'DIR/train-*.tar' --min-count 5 "
                             "--synonyms DIR/synonyms.json --out DIR/vocab.json` and pass data.vocab=DIR/vocab.json")
        if not os.path.isfile(path):
            raise ValueError(f"data.vocab={path!r} does not exist; build it with `mawstron data vocab --shards ... "
                             f"--out {path}`")
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict) or not data.get("tags"):
            raise ValueError(f"data.vocab={path!r} has no tags; rebuild it with a lower --min-count")
        self.tags = list(data["tags"])
        self.path, self.tag_counts = path, data.get("counts") or {}
        self.synonyms = {k.lower(): v.lower() for k, v in (data.get("synonyms") or {}).items()}
        self.index = {t: i for i, t in enumerate(self.tags)}
        # identifies the tag -> index mapping (tags and synonyms): precomputed tag ids record the one they used
        key = json.dumps([self.tags, sorted(self.synonyms.items())]).encode()
        self.fingerprint = hashlib.sha1(key).hexdigest()[:16]

    def __len__(self):
        return len(self.tags)

    def counts(self):
        """Images per tag, in tag order (vocab.json ``counts``): what re-sampling weighs by."""
        import numpy as np

        missing = [t for t in self.tags if not self.tag_counts.get(t)]
        if missing:
            raise ValueError(f"data.vocab={self.path!r} has no image count for {missing[:3]}: re-sampling needs "
                             f"them; rebuild it with `mawstron data vocab`")
        return np.array([self.tag_counts[t] for t in self.tags], dtype=np.float64)

    def indices(self, meta: dict) -> list[int]:
        return sorted({self.index[c] for c in (canonical(t, self.synonyms) for t in raw_hashtags(meta))
                       if c in self.index})


def read_num_classes(shards: list[str]) -> int:
    """Classes of labelled shards: ``num_classes`` from a manifest.json beside them, else max label + 1."""
    manifest = os.path.join(os.path.dirname(os.path.abspath(shards[0])), "manifest.json")
    if os.path.isfile(manifest):
        with open(manifest) as f:
            n = json.load(f).get("num_classes")
        if n:
            return int(n)
    top = -1
    for shard in shards:
        samples, _ = _scan(shard, validate=False)
        with open_shard(shard) if samples else open(os.devnull, "rb") as f:
            for s in samples:
                f.seek(s.meta[0])
                label = parse_meta(f.read(s.meta[1]), s.meta_ext).get("label")
                if isinstance(label, int):
                    top = max(top, label)
    if top < 0:
        raise ValueError(f"no json 'label' in {shards[0]}...: fine-tuning and evaluation need labelled shards "
                         f"(e.g. the eval-train-*.tar that `mawstron data synth` writes)")
    return top + 1
