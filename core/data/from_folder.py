"""``mawstron data from-folder``: images people already have -> webdataset shards with index files.

Two layouts:

* an ImageFolder (``SRC/<class name>/<image>``): each sample gets ``{"label": i, "class_name": ...}``, labels
  numbered by sorted class name as torchvision does; fine-tuning and ``mawstron eval`` read these shards;
* a flat folder of images with optional sidecars, img2dataset style: ``KEY.txt`` (a caption whose ``#tags`` WSP
  uses) or ``KEY.json`` (any metadata, e.g. ``{"hashtags": [...]}`` or ``{"caption": ...}``); an image without a
  sidecar is kept with no tags (WSP counts it as ``no_known_hashtag``, MAE uses it).

JPEGs are copied byte for byte; other formats are re-encoded as JPEG (quality 95), since both loaders decode
JPEG.  Keys are sequential (``000000042``) and each sample's json records its source path.  Every shard is
indexed (validated with PIL: a file that does not decode is left out and counted).  ``manifest.json`` in the
output records each split; converting a second split of an ImageFolder (``--split val``) into the same folder
reuses the first split's class numbering, so train and val labels agree.

An image that does not open (corrupt, or not an image at all) is skipped and counted (``unreadable_source``), as is
a file reached through a symbolic link that leaves the source tree (``outside_source``: never followed).  With
``--overwrite`` the new shards are written into a private temporary folder inside ``--out`` first and swapped in
only once all of them are written, so a failure midway leaves the old shards as they were.
"""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import tarfile
import tempfile

from .image_folder import IMAGE_SUFFIXES, is_image_folder, list_images, scan_image_folder
from .jobs import run_tasks
from .shards import build_index
from .synth import _add as add_member

MANIFEST = "manifest.json"


def _jpeg_bytes(path: str) -> bytes | None:
    """The image as JPEG bytes; None when it does not open (the caller skips and counts it).  A JPEG is copied
    as it is: the index's validation decodes it and leaves it out if it is broken."""
    with open(path, "rb") as f:
        data = f.read()
    if path.lower().endswith((".jpg", ".jpeg")):
        return data
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="JPEG", quality=95)
            return buf.getvalue()
    except Exception:  # noqa: BLE001 - UnidentifiedImageError, truncated files, decoder errors: this image's fault
        return None


def _inside(root: str, path: str) -> bool:
    """Whether ``path`` resolves (links followed) inside ``root``."""
    real_root = os.path.realpath(root)
    return os.path.realpath(path).startswith(real_root + os.sep)


def _sidecar_meta(image_path: str) -> dict:
    stem = os.path.splitext(image_path)[0]
    meta: dict = {}
    if os.path.isfile(stem + ".json"):
        with open(stem + ".json") as f:
            try:
                loaded = json.load(f)
            except ValueError as e:
                raise ValueError(f"{stem}.json is not valid JSON ({e}); fix or remove it") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{stem}.json must hold an object such as {{\"hashtags\": [\"cat\"]}}")
        meta.update(loaded)
    if os.path.isfile(stem + ".txt") and "caption" not in meta:
        with open(stem + ".txt", encoding="utf-8", errors="replace") as f:
            meta["caption"] = f.read().strip()
    return meta


def _samples(src: str, manifest: dict) -> tuple[list[tuple[str, dict]], dict]:
    """[(image path, metadata)] and what the manifest records about the layout."""
    if is_image_folder(src):
        classes, found = scan_image_folder(src)
        known = manifest.get("classes")
        if known:
            unknown = sorted(set(classes) - set(known))
            if unknown:
                raise ValueError(f"{src} has classes {unknown[:5]} that the existing {MANIFEST} does not list; "
                                 f"convert it into another --out folder")
            classes = list(known)
        index = {name: i for i, name in enumerate(classes)}
        samples = [(path, {"label": index[os.path.basename(os.path.dirname(path))],
                           "class_name": os.path.basename(os.path.dirname(path))}) for path, _ in found]
        return samples, {"layout": "imagefolder", "classes": classes, "num_classes": len(classes)}
    paths = list_images(src) if os.path.isdir(src) else []
    if not paths:
        raise ValueError(f"{src!r} holds no image: give an ImageFolder (SRC/<class>/<image>) or a folder of images "
                         f"({', '.join(IMAGE_SUFFIXES)}) with optional KEY.txt / KEY.json sidecars")
    return [(p, _sidecar_meta(p)) for p in paths], {"layout": "images+sidecars"}


def _write_folder_shard(job: tuple) -> dict:
    """One output shard (the per-shard task on the engine): its samples as ``(image path, metadata, key)``, written
    to ``path`` in the staging folder; images that do not open are skipped and counted (``unreadable_source``)."""
    path, src, items = job
    unreadable = 0
    with open(path, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for image_path, meta, key in items:
            data = _jpeg_bytes(image_path)
            if data is None:
                unreadable += 1
                continue
            record = {"key": key, "source": os.path.relpath(image_path, src), **meta}
            add_member(tar, f"{key}.jpg", data)
            add_member(tar, f"{key}.json", json.dumps(record, sort_keys=True).encode())
    return {"skipped": {"unreadable_source": unreadable} if unreadable else {}}


def _index_folder_shard(job: tuple) -> dict:
    """The index of one written shard (decoding each image when ``validate``): its usable samples and skips."""
    path, validate = job
    ix = build_index(path, validate=validate, force=True)
    return {"samples": len(ix.samples), "skipped": dict(ix.skipped)}


def convert_folder(src: str, out: str, *, split: str = "train", shard_size: int = 1000, overwrite: bool = False,
                   validate: bool = True, engine: str = "local", workers: int = 1, ray_address: str = "") -> dict:
    """Write ``out/<split>-NNNNNN.tar`` and their indexes; returns this split's manifest entry."""
    if shard_size <= 0:
        raise ValueError(f"--shard-size must be positive, got {shard_size}")
    if not split or "/" in split or "*" in split:
        raise ValueError(f"--split {split!r} must be a plain name such as train or val")
    old = sorted(glob.glob(os.path.join(out, f"{split}-*.tar")))
    if old and not overwrite:
        raise ValueError(f"{out} already holds {len(old)} {split}-*.tar shards; pass --overwrite to replace them "
                         f"or choose another --out / --split")
    manifest_path = os.path.join(out, MANIFEST)
    manifest = {}
    if os.path.isfile(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
    samples, layout = _samples(src, manifest)
    skipped: dict[str, int] = {}
    inside = [(p, m) for p, m in samples if _inside(src, p)]
    if len(inside) < len(samples):
        skipped["outside_source"] = len(samples) - len(inside)
    samples = inside
    os.makedirs(out, exist_ok=True)
    shards, jobs = [], []
    for k, start in enumerate(range(0, len(samples), shard_size)):
        name = f"{split}-{k:06d}.tar"
        items = [(*samples[i], f"{i:09d}") for i in range(start, min(start + shard_size, len(samples)))]
        shards.append(name)
        jobs.append((name, src, items))
    staging = tempfile.mkdtemp(prefix=f".{split}-new-", dir=out)  # private, same file system: renames are cheap
    try:
        for result in run_tasks(_write_folder_shard, [(os.path.join(staging, n), src, items) for n, src, items in jobs],
                                engine=engine, workers=workers, ray_address=ray_address, what="from-folder"):
            for reason, n in result["skipped"].items():
                skipped[reason] = skipped.get(reason, 0) + n
        _swap_in(staging, out, old, shards)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    usable = 0
    for result in run_tasks(_index_folder_shard, [(os.path.join(out, name), validate) for name in shards],
                            engine=engine, workers=workers, ray_address=ray_address, what="from-folder index"):
        usable += result["samples"]
        for reason, n in result["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    entry = {"source": os.path.abspath(src), "images": len(samples) + skipped.get("outside_source", 0),
             "usable": usable, "skipped": skipped,
             "shards": shards, **{k: v for k, v in layout.items() if k not in ("classes", "num_classes")}}
    manifest.setdefault("format", "webdataset (KEY.jpg + KEY.json), written by `mawstron data from-folder`")
    manifest.setdefault("splits", {})[split] = entry
    if "classes" in layout:
        manifest["classes"], manifest["num_classes"] = layout["classes"], layout["num_classes"]
    tmp = manifest_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, manifest_path)
    return entry


def _swap_in(staging: str, out: str, old: list[str], shards: list[str]) -> None:
    """Replace the old shards of the split (and their index files) by the complete new ones."""
    for path in old:
        for stale in (path, path + ".idx", path + ".idx.json"):
            if os.path.exists(stale):
                os.remove(stale)
    for name in shards:
        os.replace(os.path.join(staging, name), os.path.join(out, name))
