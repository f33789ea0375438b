"""A procedurally generated web-image collection written as real JPEG webdataset shards.

Each image shows one object (a shape in a colour, with a texture, size and position) on a background (solid or
gradient) with clutter (small strokes in other colours) and pixel noise.  Its hashtags are noisy as web
hashtags are: true tags are dropped, wrong tags of the same kind and irrelevant tags (#love, #nofilter) are
added, and tags come in case and synonym variants (``#Red``, ``#red``, ``#crimson``).  The shape and colour
tags correlate with the evaluation classes, so weakly-supervised pretraining learns features that transfer.

Three scenes (``--scene``): ``web`` (the default) rotates the object freely, scales it to 18-36% of the image side
and adds clutter; ``upright`` keeps it upright, at 26-40% of the side, without clutter.  A small ViT trained from
scratch learns the shapes of ``upright`` objects within minutes of CPU time, but of ``web`` objects barely at all
(pilots of the study on 32 px images; see benchmarks/study.py).  In both, hashtags name attributes (a shape, a
colour) and the classes are their conjunctions.  ``things`` (core/data/things.py, the study's scene) turns that
round as on Instagram: 48 named categories in families of look-alikes, hashtags that name the category, classes
that are the categories.  ``web`` and ``upright`` are byte-identical to what they were before ``things`` existed.

Evaluation splits (``eval-train-*``, ``eval-test-*``) carry clean labels: for web and upright, class = shape x colour over
``EVAL_SHAPES x EVAL_COLOURS`` (15 classes; colour alone or shape alone is not enough).

Everything is a function of (seed, split, index): the same seed writes the same bytes.
"""

from __future__ import annotations

import io
import json
import math
import os
import tarfile

import numpy as np

from . import things
from .captions import noisy_caption, written_variant

SHAPES = ("circle", "square", "triangle", "star", "cross", "hexagon")
COLOURS = {
    "red": (215, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 215),
    "yellow": (235, 205, 40), "purple": (140, 50, 180), "orange": (240, 130, 30),
}
EVAL_SHAPES = SHAPES[:5]
EVAL_COLOURS = ("red", "green", "blue")
CLASSES = [f"{c}_{s}" for s in EVAL_SHAPES for c in EVAL_COLOURS]
TEXTURES = ("plain", "striped", "dotted")
# The long-tailed collection (``--tail zipf:S``) draws from longer lists, ordered by rank: the k-th entry (1-based)
# has probability proportional to k^-S.  The evaluation shapes are spread over the ranks (circle 1st, square 3rd,
# triangle 5th, star 8th, cross 11th), so the 15 balanced evaluation classes include head and tail classes.
TAIL_SHAPES = ("circle", "hexagon", "square", "pentagon", "triangle", "diamond", "octagon", "star", "ring",
               "crescent", "cross", "arrow")
TAIL_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "pink", "cyan", "brown", "white", "grey",
                "black")
TAIL_TEXTURES = ("plain", "striped", "dotted", "checked")
EXTRA_COLOURS = {"pink": (240, 120, 180), "cyan": (40, 200, 215), "brown": (125, 75, 35), "white": (245, 245, 245),
                 "grey": (128, 128, 128), "black": (15, 15, 15)}
TAIL_HEAD_SHAPES = ("circle", "square")  # evaluation classes of these shapes are "head" classes
TAIL_TAIL_SHAPES = ("star", "cross")  # and of these "tail" classes (triangle, in the middle, is neither)
# variant -> canonical (all lower case; case variants are generated on top)
SYNONYMS = {
    "crimson": "red", "scarlet": "red", "emerald": "green", "lime": "green", "navy": "blue", "azure": "blue",
    "golden": "yellow", "violet": "purple", "lilac": "purple", "tangerine": "orange",
    "round": "circle", "circles": "circle", "squares": "square", "box": "square", "triangles": "triangle",
    "stars": "star", "plus": "cross", "hex": "hexagon", "stripes": "striped", "stripy": "striped",
    "polkadot": "dotted", "dots": "dotted",
    # tags that only the long-tailed collection uses
    "pentagons": "pentagon", "rhombus": "diamond", "octagons": "octagon", "donut": "ring", "moon": "crescent",
    "arrows": "arrow", "rose": "pink", "turquoise": "cyan", "chocolate": "brown", "gray": "grey", "checkered": "checked",
}
_VARIANTS: dict[str, list[str]] = {}
for _v, _c in SYNONYMS.items():
    _VARIANTS.setdefault(_c, []).append(_v)
NOISE_TAGS = ("love", "instagood", "photooftheday", "nofilter", "art", "design", "tbt", "happy", "cute",
              "picoftheday", "follow", "instadaily", "beautiful", "fun", "weekend", "mood")
SPLITS = {"train": 0, "eval-train": 1, "eval-test": 2}
# scene -> (object scale range as a share of the image side, threshold of the #big tag, free rotation, clutter)
SCENES = {"web": ((0.18, 0.36), 0.28, True, True), "upright": ((0.26, 0.40), 0.33, False, False)}
# every --scene: the shape scenes above, and `things` (core/data/things.py: 48 named categories whose hashtags name
# them, as on Instagram)
SCENE_NAMES = (*SCENES, "things")


def _polygon(cx, cy, r, n, rot):
    return [(cx + r * math.cos(rot + 2 * math.pi * k / n), cy + r * math.sin(rot + 2 * math.pi * k / n))
            for k in range(n)]


def _shape_outline(shape, cx, cy, r, rot):
    if shape == "square":
        return _polygon(cx, cy, r * 1.2, 4, rot + math.pi / 4)
    if shape == "triangle":
        return _polygon(cx, cy, r * 1.25, 3, rot - math.pi / 2)
    if shape == "hexagon":
        return _polygon(cx, cy, r * 1.1, 6, rot)
    if shape == "pentagon":
        return _polygon(cx, cy, r * 1.15, 5, rot)
    if shape == "octagon":
        return _polygon(cx, cy, r * 1.05, 8, rot)
    if shape == "diamond":
        c, s = math.cos(rot), math.sin(rot)
        base = [(0, -1.3 * r), (0.7 * r, 0), (0, 1.3 * r), (-0.7 * r, 0)]
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in base]
    if shape == "arrow":
        w, L = r * 0.3, r * 1.2
        base = [(-L, -w), (0.2 * L, -w), (0.2 * L, -2.2 * w), (L, 0), (0.2 * L, 2.2 * w), (0.2 * L, w), (-L, w)]
        c, s = math.cos(rot), math.sin(rot)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in base]
    if shape == "star":
        pts = []
        for k in range(10):
            rr = r * 1.3 if k % 2 == 0 else r * 0.55
            a = rot - math.pi / 2 + math.pi * k / 5
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts
    if shape == "cross":
        w, L = r * 0.4, r * 1.2
        base = [(-w, -L), (w, -L), (w, -w), (L, -w), (L, w), (w, w), (w, L), (-w, L), (-w, w), (-L, w), (-L, -w),
                (-w, -w)]
        c, s = math.cos(rot), math.sin(rot)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in base]
    return None  # circle, ring, crescent (drawn from ellipses)


def render(rng: np.random.Generator, size: int, shape: str, colour: str, texture_p=None, scene: str = "web"):
    """One image (PIL, RGB) and its true attributes.  Every scene makes the same random draws in the same order,
    so ``web`` images are what they were before scenes existed."""
    from PIL import Image, ImageDraw

    (scale_lo, scale_hi), big_above, rotate, clutter = SCENES[scene]
    # background: solid or vertical gradient, light or dark, never close to a class colour's saturation
    dark = rng.random() < 0.4
    base = rng.integers(20, 90, 3) if dark else rng.integers(150, 235, 3)
    if rng.random() < 0.5:
        top, bottom = base, np.clip(base + rng.integers(-60, 60, 3), 0, 255)
        t = np.linspace(0, 1, size)[:, None, None]
        arr = (top[None, None] * (1 - t) + bottom[None, None] * t) * np.ones((1, size, 1))
    else:
        arr = np.ones((size, size, 3)) * base[None, None]
    img = Image.fromarray(arr.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    # clutter: small strokes and blobs in random colours
    for _ in range(int(rng.integers(0, 5))):
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, y0 = rng.uniform(0, size, 2)
        x1, y1 = x0 + rng.uniform(-0.3, 0.3) * size, y0 + rng.uniform(-0.3, 0.3) * size
        if rng.random() < 0.5:
            if clutter:
                draw.line([(x0, y0), (x1, y1)], fill=c, width=max(1, size // 40))
        else:
            rr = rng.uniform(0.02, 0.06) * size
            if clutter:
                draw.ellipse([x0 - rr, y0 - rr, x0 + rr, y0 + rr], fill=c)
    # the object
    scale = rng.uniform(scale_lo, scale_hi)
    r = scale * size
    cx, cy = rng.uniform(r * 1.1, size - r * 1.1, 2)
    rot = rng.uniform(0, 2 * math.pi)  # drawn in every scene, so that the draws after it do not depend on the scene
    if not rotate:
        rot = 0.0
    rgb = np.array(COLOURS.get(colour) or EXTRA_COLOURS[colour]) + rng.integers(-25, 26, 3)
    fill = tuple(int(v) for v in np.clip(rgb, 0, 255))
    if texture_p is None:
        texture = TEXTURES[int(rng.integers(0, len(TEXTURES)))]
    else:
        texture = TAIL_TEXTURES[int(rng.choice(len(TAIL_TEXTURES), p=texture_p))]
    mask = Image.new("L", (size, size), 0)
    mdraw = ImageDraw.Draw(mask)
    outline = _shape_outline(shape, cx, cy, r, rot)
    if outline is None:
        mdraw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        if shape == "ring":
            mdraw.ellipse([cx - 0.5 * r, cy - 0.5 * r, cx + 0.5 * r, cy + 0.5 * r], fill=0)
        elif shape == "crescent":
            dx, dy = 0.55 * r * math.cos(rot), 0.55 * r * math.sin(rot)
            mdraw.ellipse([cx + dx - r, cy + dy - r, cx + dx + r, cy + dy + r], fill=0)
    else:
        mdraw.polygon(outline, fill=255)
    obj = Image.new("RGB", (size, size), fill)
    if texture != "plain":
        odraw = ImageDraw.Draw(obj)
        darker = tuple(int(v * 0.55) for v in fill)
        step = max(3, int(size / 10))
        if texture == "striped":
            for k in range(-size, 2 * size, step):
                odraw.line([(k, 0), (k + size, size)], fill=darker, width=max(1, step // 2))
        elif texture == "checked":
            for k in range(0, size, step):
                odraw.line([(k, 0), (k, size)], fill=darker, width=max(1, step // 3))
                odraw.line([(0, k), (size, k)], fill=darker, width=max(1, step // 3))
        else:
            for yy in range(step // 2, size, step):
                for xx in range(step // 2, size, step):
                    odraw.ellipse([xx - step / 4, yy - step / 4, xx + step / 4, yy + step / 4], fill=darker)
    img.paste(obj, (0, 0), mask)
    arr = np.asarray(img).astype(np.float32) + rng.normal(0, 6, (size, size, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    attrs = {"shape": shape, "colour": colour, "texture": texture, "size": "big" if scale > big_above else "small",
             "background": "dark" if dark else "bright"}
    return img, attrs


def _variant(rng, tag: str) -> str:
    """A synonym or case variant of a canonical tag, as people write them."""
    return written_variant(rng, tag, _VARIANTS)


def parse_tail(spec) -> float:
    """``"none"`` (or 0) -> 0.0, uniform draws; ``"zipf:S"`` -> S > 0, Zipf-like draws with exponent S."""
    if isinstance(spec, (int, float)):
        value = float(spec)
    elif spec in ("", "none", None):
        value = 0.0
    elif isinstance(spec, str) and spec.startswith("zipf:"):
        try:
            value = float(spec[len("zipf:"):])
        except ValueError:
            value = -1.0
    else:
        value = -1.0
    if not 0.0 <= value <= 4.0 or (value == 0.0 and isinstance(spec, str) and spec.startswith("zipf:")):
        raise ValueError(f"--tail {spec!r}: use none or zipf:S with an exponent S in (0, 4], e.g. zipf:1.1")
    return value


def zipf_probs(n: int, exponent: float) -> np.ndarray:
    """P(rank k) proportional to k^-exponent, k = 1..n."""
    p = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return p / p.sum()


def tail_distribution(exponent: float) -> dict:
    """What the long-tailed collection draws from: each kind's values by rank and their probabilities."""
    return {kind: {"values": list(values), "probs": [round(float(x), 6) for x in zipf_probs(len(values), exponent)]}
            for kind, values in (("shape", TAIL_SHAPES), ("colour", TAIL_COLOURS), ("texture", TAIL_TEXTURES),
                                 ("noise", NOISE_TAGS))}


def _draw(rng, values, exponent):
    return values[int(rng.choice(len(values), p=zipf_probs(len(values), exponent)))]


def noisy_hashtags(rng, attrs: dict, tail: float = 0.0) -> list[str]:
    """Web-like hashtags: the true shape/colour tags kept with p=0.75/0.7, texture/size/background less often,
    a wrong shape or colour tag with p=0.15 each, 0-3 irrelevant tags, synonym and case variants.  With
    ``tail`` > 0 the wrong and irrelevant tags follow the same Zipf law as the objects."""
    tags = []
    for key, keep in (("shape", 0.75), ("colour", 0.7), ("texture", 0.35), ("size", 0.2), ("background", 0.2)):
        value = attrs[key]
        if key == "texture" and value == "plain":
            continue
        if rng.random() < keep:
            tags.append(value)
    if tail:
        if rng.random() < 0.15:
            tags.append(_draw(rng, TAIL_SHAPES, tail))
        if rng.random() < 0.15:
            tags.append(_draw(rng, TAIL_COLOURS, tail))
        for _ in range(int(rng.integers(0, 4))):
            tags.append(_draw(rng, NOISE_TAGS, tail))
        order = rng.permutation(len(tags))
        return ["#" + _variant(rng, tags[i]) for i in order]
    if rng.random() < 0.15:
        tags.append(SHAPES[int(rng.integers(0, len(SHAPES)))])
    if rng.random() < 0.15:
        tags.append(list(COLOURS)[int(rng.integers(0, len(COLOURS)))])
    for _ in range(int(rng.integers(0, 4))):
        tags.append(NOISE_TAGS[int(rng.integers(0, len(NOISE_TAGS)))])
    order = rng.permutation(len(tags))
    return ["#" + _variant(rng, tags[i]) for i in order]


def make_sample(seed: int, split: str, index: int, size: int, tail: float = 0.0,
                scene: str = "web") -> tuple[bytes, dict]:
    """(JPEG bytes, metadata) of one sample: a function of its arguments only.  ``tail`` > 0: training objects
    and attributes are drawn Zipf-like from the longer lists, evaluation labels cycle through the classes.
    ``scene``: a key of ``SCENES``."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    if scene == "things":
        img, fields = things.make_thing(rng, split, index, size, tail)
        return _jpeg_sample(rng, img, split, index, size, fields)
    texture_p = zipf_probs(len(TAIL_TEXTURES), tail) if tail else None
    if split == "train" and tail:
        shape, colour = _draw(rng, TAIL_SHAPES, tail), _draw(rng, TAIL_COLOURS, tail)
    elif split == "train":
        shape = SHAPES[int(rng.integers(0, len(SHAPES)))]
        colour = list(COLOURS)[int(rng.integers(0, len(COLOURS)))]
    else:
        label = index % len(CLASSES) if tail else int(rng.integers(0, len(CLASSES)))
        colour, shape = CLASSES[label].split("_")
    img, attrs = render(rng, size, shape, colour, texture_p=texture_p, scene=scene)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(75, 96)))
    meta = _base_meta(split, index, size)
    if split == "train":
        tags = noisy_hashtags(rng, attrs, tail)
        meta["caption"] = noisy_caption(rng, attrs, tags, SHAPES, list(COLOURS))
        if rng.random() < 0.6:
            meta["hashtags"] = tags
    else:
        meta["label"] = label
        meta["class_name"] = CLASSES[label]
    return buf.getvalue(), meta


def _base_meta(split: str, index: int, size: int) -> dict:
    key = f"{index:09d}"
    return {"key": key, "status": "success", "url": f"https://synth.example/{split}/{key}.jpg", "width": size,
            "height": size}


def _jpeg_sample(rng, img, split: str, index: int, size: int, fields: dict) -> tuple[bytes, dict]:
    """A sample of a scene module (things.py): the image as JPEG (random quality), its fields in the metadata."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(75, 96)))
    return buf.getvalue(), {**_base_meta(split, index, size), **fields}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
    tar.addfile(info, io.BytesIO(data))


def _write_shard(args) -> tuple[str, int]:
    path, seed, split, start, stop, size, tail, scene = args
    with open(path + ".tmp", "wb") as raw:
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(start, stop):
                jpeg, meta = make_sample(seed, split, i, size, tail, scene)
                key = meta["key"]
                _add(tar, f"{key}.jpg", jpeg)
                if split == "train" and "hashtags" not in meta and i % 2:  # img2dataset's caption-as-txt layout
                    _add(tar, f"{key}.txt", meta["caption"].encode())
                else:
                    _add(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
    os.replace(path + ".tmp", path)
    return path, stop - start


def clear_old_collection(out: str) -> list[str]:
    """Remove what an earlier ``synthesize`` wrote in ``out`` and its ``manifest.json`` lists (shards and their
    DALI index files, the synonyms file, the manifest itself); nothing else is touched.  A shard-like file that
    the manifest does not list (``train-000009.tar`` from another tool) would be read with the new collection, so
    it is refused: ValueError naming it.  Returns the names removed."""
    manifest_path = os.path.join(out, "manifest.json")
    listed: set[str] = set()
    if os.path.isfile(manifest_path):
        try:
            with open(manifest_path) as f:
                manifest = json.load(f)
        except ValueError:
            manifest = {}
        if isinstance(manifest, dict) and manifest.get("generator") == "mawstron data synth":
            for names in (manifest.get("shards") or {}).values():
                listed.update(n for n in names if isinstance(n, str) and os.path.basename(n) == n)
            if isinstance(manifest.get("synonyms"), str) and os.path.basename(manifest["synonyms"]) == manifest["synonyms"]:
                listed.add(manifest["synonyms"])
            listed.add("manifest.json")
    shard_like = [n for n in os.listdir(out) if n.split("-0")[0] in SPLITS and ".tar" in n]
    foreign = sorted(n for n in shard_like if n.split(".tar")[0] + ".tar" not in listed)
    if foreign:
        raise ValueError(f"--overwrite: {out} holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, "
                         f"which no `mawstron data synth` manifest there lists; move them away yourself, or choose "
                         f"an empty folder")
    removed = []
    for name in sorted(os.listdir(out)):
        if name in listed or (name.split(".tar")[0] + ".tar" in listed and ".tar." in name):
            path = os.path.join(out, name)
            if os.path.isfile(path) and not os.path.islink(path):
                os.remove(path)
                removed.append(name)
    return removed


def synthesize(out: str, *, images: int, seed: int = 0, size: int = 64, eval_images: int = 500,
               shard_size: int = 500, workers: int = 1, tail="none", scene: str = "web",
               overwrite: bool = False) -> dict:
    """Write the collection under ``out``; returns the manifest (also written to ``out/manifest.json``).
    ``tail``: ``"none"`` (uniform objects, the original collection) or ``"zipf:S"`` (long-tailed).

    ``out`` must be empty or absent unless ``overwrite``, which first clears the earlier collection there."""
    exponent = parse_tail(tail)
    if images <= 0 or shard_size <= 0 or eval_images < 0:
        raise ValueError("--images and --shard-size must be positive, --eval-images >= 0")
    if not 16 <= size <= 512:
        raise ValueError(f"--size must be in [16, 512], got {size}")
    if scene not in SCENE_NAMES:
        raise ValueError(f"--scene {scene!r}: choose one of {', '.join(SCENE_NAMES)}")
    if os.path.isdir(out) and os.listdir(out):
        if not overwrite:
            raise ValueError(f"--out {out} is not empty; pass --overwrite to replace the collection there, or "
                             f"choose an empty folder")
        clear_old_collection(out)
    os.makedirs(out, exist_ok=True)
    jobs = []
    splits = {"train": images, "eval-train": eval_images, "eval-test": eval_images}
    shards_of: dict[str, list[str]] = {}
    for split, n in splits.items():
        shards_of[split] = []
        for k, start in enumerate(range(0, n, shard_size)):
            name = f"{split}-{k:06d}.tar"
            shards_of[split].append(name)
            jobs.append((os.path.join(out, name), seed, split, start, min(n, start + shard_size), size, exponent,
                         scene))
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            list(pool.imap(_write_shard, jobs))
    else:
        for job in jobs:
            _write_shard(job)
    with open(os.path.join(out, "synonyms.json"), "w") as f:
        json.dump(things.SYNONYMS if scene == "things" else SYNONYMS, f, indent=1, sort_keys=True)
    manifest = {
        "format": "webdataset (img2dataset layout: KEY.jpg + KEY.json or KEY.txt)",
        "generator": "mawstron data synth",
        "seed": seed, "size": size, "shard_size": shard_size, "scene": scene,
        "counts": splits, "shards": shards_of,
        "classes": CLASSES, "num_classes": len(CLASSES),
        "class_definition": "colour_shape of the object (eval splits only; json 'label' indexes 'classes')",
        "true_tags": {"shape": list(SHAPES), "colour": list(COLOURS), "texture": list(TEXTURES[1:]),
                      "size": ["big", "small"], "background": ["dark", "bright"]},
        "noise_tags": list(NOISE_TAGS),
        "synonyms": "synonyms.json",
        "tail": {"law": "uniform", "exponent": 0.0},
    }
    if exponent:
        manifest["true_tags"].update(shape=list(TAIL_SHAPES), colour=list(TAIL_COLOURS),
                                     texture=list(TAIL_TEXTURES[1:]))
        manifest["tail"] = {"law": "zipf", "exponent": exponent, "spec": f"zipf:{exponent:g}",
                            "rule": "the k-th value of each kind (1-based, listed by rank) is drawn with probability "
                                    "proportional to k^-exponent; evaluation labels cycle through the classes",
                            "train": tail_distribution(exponent),
                            "head_classes": [c for c in CLASSES if c.split("_")[1] in TAIL_HEAD_SHAPES],
                            "tail_classes": [c for c in CLASSES if c.split("_")[1] in TAIL_TAIL_SHAPES]}
    if scene == "things":
        manifest.update(things.manifest_fields(exponent))
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest
