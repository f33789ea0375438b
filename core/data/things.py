"""The ``things`` scene of ``mawstron data synth``: named things, hashtags that name them, as on Instagram.

On Instagram most hashtags name things (#goldenretriever, #sunset); SWAG canonicalises them to WordNet nouns, and
ImageNet's classes are such nouns too.  That overlap is why weakly-supervised features transfer.  This scene
builds the same relation in miniature:

- 48 categories in 8 families (dogs, cats, birds, fish, flowers, cars, boats, houses), 6 per family.  A family
  shares a body and its parts (floppy ears, a beak, a tail fin, wheels, a roof ...), as breeds and species share
  theirs; its members differ by colour and markings (plain, striped, spotted, patched, checked), so look-alike
  siblings (a poodle and a dalmatian: both white dogs) make the task less than trivial.  Dogs and cats share ears
  and bodies too.
- The hashtags name the category (#beagle), with web noise: the name dropped, a wrong category (most often a
  look-alike sibling), plurals and synonyms that ``data vocab`` canonicalises (#beagles, #Beagle, #lab for
  labrador), generic tags (#dog, #pet, #animal) and irrelevant ones (#love), and a long tail over categories
  (``--tail zipf:S``, by rank: every family has head and tail members).
- Some tags name parts (#ears, #wheels), the context (#beach, #snow: the background) or attributes (#brown,
  #spots).
- The evaluation classes are the categories (balanced splits); head classes are the 16 most frequent in the
  training collection, tail classes the 16 rarest.
- Captions name the category in a sentence ("look at my beagle at the beach #beagle #dog"), sometimes only its
  family ("my dog"), sometimes a wrong one.

Objects are upright and without clutter (what a small ViT learns within minutes of CPU time; see
core/data/synth.py's ``upright`` scene), with a random position, size and mirror image.
"""

from __future__ import annotations

import math

import numpy as np

from .captions import CLOSERS, OPENERS, P_ONLY_HASHTAGS, written_variant

PALETTE = {
    "red": (205, 40, 40), "orange": (240, 130, 30), "yellow": (235, 205, 40), "green": (40, 160, 60),
    "blue": (40, 80, 210), "purple": (140, 50, 180), "pink": (240, 130, 180), "brown": (125, 75, 35),
    "black": (28, 28, 28), "white": (240, 240, 240), "grey": (130, 130, 130), "cyan": (40, 200, 215),
}
# family -> (generic tags, part tags); its body and parts are drawn by _draw_family
FAMILIES = {
    "dog": (("pet", "animal"), ("ears", "paws")),
    "cat": (("pet", "animal"), ("ears", "whiskers", "tail")),
    "bird": (("animal", "nature"), ("beak", "feathers")),
    "fish": (("animal", "aquarium"), ("fins", "scales")),
    "flower": (("nature", "garden"), ("petals", "stem")),
    "car": (("vehicle", "roadtrip"), ("wheels",)),
    "boat": (("vehicle", "sea"), ("sail", "mast")),
    "house": (("architecture", "home"), ("roof", "door")),
}
# (name, family, colour, marking), listed by family.  Rank (for the long tail) is 8 x (position in the family) +
# (family's position): every family has a head member (rank 1-8) and a tail member (rank 41-48).
SPECIES = (
    ("beagle", "dog", "brown", "patched"), ("poodle", "dog", "white", "plain"), ("husky", "dog", "grey", "patched"),
    ("labrador", "dog", "yellow", "plain"), ("doberman", "dog", "black", "plain"),
    ("dalmatian", "dog", "white", "spotted"),
    ("tabby", "cat", "orange", "striped"), ("siamese", "cat", "white", "patched"), ("persian", "cat", "grey", "plain"),
    ("bombay", "cat", "black", "plain"), ("bengal", "cat", "orange", "spotted"), ("sphynx", "cat", "pink", "plain"),
    ("robin", "bird", "brown", "patched"), ("canary", "bird", "yellow", "plain"), ("bluejay", "bird", "blue", "patched"),
    ("cardinal", "bird", "red", "plain"), ("parrot", "bird", "green", "plain"), ("flamingo", "bird", "pink", "plain"),
    ("goldfish", "fish", "orange", "plain"), ("clownfish", "fish", "orange", "striped"),
    ("tuna", "fish", "grey", "plain"), ("guppy", "fish", "cyan", "spotted"), ("salmon", "fish", "pink", "plain"),
    ("angelfish", "fish", "yellow", "striped"),
    ("rose", "flower", "red", "plain"), ("sunflower", "flower", "yellow", "plain"), ("daisy", "flower", "white", "plain"),
    ("tulip", "flower", "orange", "plain"), ("orchid", "flower", "purple", "spotted"),
    ("lily", "flower", "pink", "plain"),
    ("taxi", "car", "yellow", "checked"), ("sedan", "car", "blue", "plain"), ("firetruck", "car", "red", "plain"),
    ("jeep", "car", "green", "plain"), ("limousine", "car", "black", "plain"), ("policecar", "car", "white", "patched"),
    ("sailboat", "boat", "white", "plain"), ("canoe", "boat", "red", "plain"), ("yacht", "boat", "blue", "patched"),
    ("kayak", "boat", "orange", "plain"), ("ferry", "boat", "green", "striped"), ("tugboat", "boat", "red", "patched"),
    ("cottage", "house", "white", "plain"), ("barn", "house", "red", "plain"), ("cabin", "house", "brown", "striped"),
    ("castle", "house", "grey", "checked"), ("villa", "house", "yellow", "plain"), ("igloo", "house", "white", "checked"),
)
_FAMILY_ORDER = list(FAMILIES)
_POSITION = {name: k for k, name in enumerate(s[0] for s in SPECIES)}
# categories by rank (rank 1 first): the classes' label order too
CATEGORIES = sorted((s[0] for s in SPECIES),
                    key=lambda n: 8 * (_POSITION[n] % 6) + _FAMILY_ORDER.index(SPECIES[_POSITION[n]][1]))
SPECIES_OF = {s[0]: s for s in SPECIES}
HEAD_CLASSES = CATEGORIES[:16]
TAIL_CLASSES = CATEGORIES[-16:]
MARKING_TAGS = {"striped": "stripes", "spotted": "spots", "patched": "patches", "checked": "checkered"}
CONTEXTS = ("beach", "snow", "night", "park", "home")
NOISE_TAGS = ("love", "instagood", "photooftheday", "nofilter", "happy", "cute", "picoftheday", "follow",
              "instadaily", "beautiful", "fun", "weekend", "mood", "tbt")
# variant -> canonical tag (lower case; case variants come on top); every category also has its plural


def plural(noun: str) -> str:
    if noun.endswith("fish"):
        return noun
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    return noun + "s"


SYNONYMS = {
    **{plural(name): name for name in (*CATEGORIES, *FAMILIES) if plural(name) != name},
    "lab": "labrador", "dalmation": "dalmatian", "limo": "limousine", "fireengine": "firetruck",
    "nemo": "clownfish", "puppy": "dog", "doggo": "dog", "kitty": "cat", "kitten": "cat", "birdie": "bird",
    "copcar": "policecar", "gray": "grey", "spotty": "spots", "stripy": "stripes", "seaside": "beach",
    "snowy": "snow",
}
_VARIANTS: dict[str, list[str]] = {}
for _v, _c in sorted(SYNONYMS.items()):
    _VARIANTS.setdefault(_c, []).append(_v)


def zipf_probs(n: int, exponent: float) -> np.ndarray:
    p = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return p / p.sum()


def category_probs(tail: float) -> np.ndarray:
    """Training probability of each category (CATEGORIES order): uniform, or Zipf by rank for ``tail`` > 0."""
    return zipf_probs(len(CATEGORIES), tail) if tail else np.full(len(CATEGORIES), 1 / len(CATEGORIES))


# ------------------------------------------------------------------------------------------------------- drawing
def _background(rng, size: int, context: str) -> np.ndarray:
    """Context as a two-tone or gradient background, jittered."""
    jitter = rng.integers(-18, 19, 3)
    if context == "beach":  # sky over sand
        top, bottom, split = (150, 200, 235), (225, 200, 150), rng.uniform(0.45, 0.7)
    elif context == "snow":
        top, bottom, split = (215, 225, 240), (245, 245, 250), rng.uniform(0.3, 0.6)
    elif context == "night":
        top, bottom, split = (12, 14, 40), (35, 40, 75), rng.uniform(0.3, 0.7)
    elif context == "park":  # sky over grass
        top, bottom, split = (170, 210, 240), (95, 160, 80), rng.uniform(0.4, 0.7)
    else:  # home: a wall over a floor
        top, bottom, split = (215, 195, 170), (150, 115, 85), rng.uniform(0.55, 0.8)
    rows = np.where(np.arange(size)[:, None] < split * size, np.array(top)[None], np.array(bottom)[None])
    arr = np.clip(rows[:, None, :] + jitter[None, None, :], 0, 255) * np.ones((1, size, 1))
    return arr


def _mirror(points, cx):
    return [(2 * cx - x, y) for x, y in points]


def _draw_family(body, detail, family: str, cx: float, cy: float, r: float, flip: bool, dark, accent) -> None:
    """The family's body (on ``body``, a mask that the marking fills) and its parts (on ``detail``, an RGB draw, in
    their own colours: ``dark`` is the body colour darkened, ``accent`` a fixed colour per part)."""
    def pts(p):
        return _mirror(p, cx) if flip else p

    if family in ("dog", "cat"):
        body.ellipse([cx - 1.15 * r, cy - 0.85 * r, cx + 1.15 * r, cy + 0.85 * r], fill=255)
        if family == "dog":  # floppy ears hanging at the sides, legs
            for s in (-1, 1):
                detail.ellipse([cx + s * 0.95 * r - 0.32 * r, cy - 0.75 * r, cx + s * 0.95 * r + 0.32 * r,
                                cy + 0.2 * r], fill=dark)
        else:  # pointy ears on top, a raised tail
            for s in (-1, 1):
                detail.polygon([(cx + s * 0.25 * r, cy - 0.7 * r), (cx + s * 0.95 * r, cy - 0.45 * r),
                                (cx + s * 0.75 * r, cy - 1.35 * r)], fill=dark)
            detail.line(pts([(cx + 1.0 * r, cy + 0.3 * r), (cx + 1.55 * r, cy - 0.6 * r)]), fill=dark,
                        width=max(1, int(0.3 * r)))
        for s in (-1, 1):  # legs
            detail.rectangle([cx + s * 0.6 * r - 0.15 * r, cy + 0.7 * r, cx + s * 0.6 * r + 0.15 * r, cy + 1.25 * r],
                             fill=dark)
    elif family == "bird":
        body.ellipse([cx - 0.95 * r, cy - 0.8 * r, cx + 0.95 * r, cy + 0.8 * r], fill=255)
        detail.polygon(pts([(cx + 0.85 * r, cy - 0.3 * r), (cx + 1.6 * r, cy - 0.05 * r), (cx + 0.85 * r, cy + 0.15 * r)]),
                       fill=accent)  # beak
        detail.polygon(pts([(cx - 0.8 * r, cy), (cx - 1.5 * r, cy - 0.5 * r), (cx - 1.4 * r, cy + 0.4 * r)]),
                       fill=dark)  # tail feathers
        detail.polygon(pts([(cx - 0.5 * r, cy - 0.1 * r), (cx + 0.3 * r, cy - 0.1 * r), (cx - 0.3 * r, cy + 0.5 * r)]),
                       fill=dark)  # wing
    elif family == "fish":
        body.ellipse([cx - 1.25 * r, cy - 0.7 * r, cx + 1.0 * r, cy + 0.7 * r], fill=255)
        detail.polygon(pts([(cx - 1.1 * r, cy), (cx - 1.75 * r, cy - 0.65 * r), (cx - 1.75 * r, cy + 0.65 * r)]),
                       fill=dark)  # tail fin
        ex = cx + (-0.55 if flip else 0.55) * r
        detail.ellipse([ex - 0.15 * r, cy - 0.3 * r, ex + 0.15 * r, cy], fill=(15, 15, 15))  # eye
    elif family == "flower":
        detail.line([(cx, cy + 0.5 * r), (cx, cy + 2.0 * r)], fill=(40, 130, 40), width=max(1, int(0.25 * r)))
        petals = []
        for k in range(10):
            rr = r * 1.1 if k % 2 == 0 else r * 0.55
            a = -math.pi / 2 + math.pi * k / 5
            petals.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        body.polygon(petals, fill=255)
        detail.ellipse([cx - 0.32 * r, cy - 0.32 * r, cx + 0.32 * r, cy + 0.32 * r], fill=accent)  # centre
    elif family == "car":
        body.rectangle([cx - 1.4 * r, cy - 0.35 * r, cx + 1.4 * r, cy + 0.45 * r], fill=255)
        body.polygon(pts([(cx - 0.8 * r, cy - 0.35 * r), (cx - 0.5 * r, cy - 1.0 * r), (cx + 0.6 * r, cy - 1.0 * r),
                          (cx + 0.9 * r, cy - 0.35 * r)]), fill=255)  # cabin
        for s in (-1, 1):  # wheels
            detail.ellipse([cx + s * 0.85 * r - 0.38 * r, cy + 0.1 * r, cx + s * 0.85 * r + 0.38 * r, cy + 0.86 * r],
                           fill=(20, 20, 20))
    elif family == "boat":
        body.polygon([(cx - 1.5 * r, cy + 0.15 * r), (cx + 1.5 * r, cy + 0.15 * r), (cx + 0.95 * r, cy + 0.85 * r),
                      (cx - 0.95 * r, cy + 0.85 * r)], fill=255)  # hull
        detail.line([(cx, cy + 0.15 * r), (cx, cy - 1.45 * r)], fill=(60, 45, 30), width=max(1, int(0.15 * r)))
        detail.polygon(pts([(cx + 0.1 * r, cy - 1.35 * r), (cx + 0.1 * r, cy - 0.05 * r), (cx + 1.05 * r, cy - 0.05 * r)]),
                       fill=accent)  # sail
    else:  # house
        body.rectangle([cx - 1.0 * r, cy - 0.3 * r, cx + 1.0 * r, cy + 1.0 * r], fill=255)
        detail.polygon([(cx - 1.3 * r, cy - 0.25 * r), (cx + 1.3 * r, cy - 0.25 * r), (cx, cy - 1.3 * r)],
                       fill=dark)  # roof
        dx = cx + (-0.45 if flip else 0.45) * r
        detail.rectangle([dx - 0.2 * r, cy + 0.35 * r, dx + 0.2 * r, cy + 1.0 * r], fill=(45, 30, 20))  # door


_ACCENTS = {"bird": (245, 160, 20), "flower": (120, 70, 20), "boat": (225, 225, 215)}


def marking_layer(size: int, fill: tuple, marking: str, rng):
    """The body's fill (PIL RGB, full image) with its marking in a darker (or, on dark bodies, lighter) shade."""
    from PIL import Image, ImageDraw

    layer = Image.new("RGB", (size, size), fill)
    if marking == "plain":
        return layer
    draw = ImageDraw.Draw(layer)
    light = sum(fill) / 3 > 90
    other = tuple(int(v * 0.45) for v in fill) if light else (200, 200, 200)
    step = max(3, int(size / 9))
    if marking == "spotted":  # bigger spots, sparser: at 32 px a dense pattern would read as a check
        step = max(5, int(size / 6))
    if marking == "striped":
        for k in range(-size, 2 * size, step):
            draw.line([(k, 0), (k + size, size)], fill=other, width=max(1, step // 2))
    elif marking == "checked":
        for k in range(0, size, step):
            draw.line([(k, 0), (k, size)], fill=other, width=max(1, step // 3))
            draw.line([(0, k), (size, k)], fill=other, width=max(1, step // 3))
    elif marking == "spotted":
        off = rng.uniform(0, step, 2)
        for yy in np.arange(off[1], size, step):
            for xx in np.arange(off[0], size, step):
                draw.ellipse([xx - step / 3, yy - step / 3, xx + step / 3, yy + step / 3], fill=other)
    elif marking == "patched":  # a contrasting patch over one half
        patch = (245, 245, 245) if sum(fill) / 3 < 200 else (125, 75, 35)
        x0 = rng.uniform(0.35, 0.6) * size
        draw.rectangle([x0, 0, size, size], fill=patch)
    return layer


def render_thing(rng: np.random.Generator, size: int, name: str):
    """One image (PIL RGB) of category ``name`` and its attributes (family, colour, marking, context, size)."""
    from PIL import Image, ImageDraw

    _, family, colour, marking = SPECIES_OF[name]
    context = CONTEXTS[int(rng.integers(0, len(CONTEXTS)))]
    img = Image.fromarray(_background(rng, size, context).astype(np.uint8), "RGB")
    scale = rng.uniform(0.2, 0.27)
    r = scale * size
    cx = rng.uniform(0.5 - 0.08, 0.5 + 0.08) * size
    cy = rng.uniform(0.5 - 0.06, 0.5 + 0.06) * size
    flip = bool(rng.random() < 0.5)
    rgb = np.clip(np.array(PALETTE[colour]) + rng.integers(-20, 21, 3), 0, 255)
    fill = tuple(int(v) for v in rgb)
    dark = tuple(int(v * 0.6) for v in fill) if sum(fill) / 3 > 60 else (90, 90, 90)
    mask = Image.new("L", (size, size), 0)
    detail = ImageDraw.Draw(img)
    _draw_family(ImageDraw.Draw(mask), detail, family, cx, cy, r, flip, dark, _ACCENTS.get(family, dark))
    img.paste(marking_layer(size, fill, marking, rng), (0, 0), mask)
    if family == "flower":  # the centre on top of the petals
        detail.ellipse([cx - 0.32 * r, cy - 0.32 * r, cx + 0.32 * r, cy + 0.32 * r], fill=_ACCENTS["flower"])
    arr = np.asarray(img).astype(np.float32) + rng.normal(0, 5, (size, size, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    attrs = {"category": name, "family": family, "colour": colour, "marking": marking, "context": context,
             "size": "big" if scale > 0.235 else "small"}
    return img, attrs


# ------------------------------------------------------------------------------------------------------ hashtags
def _wrong_category(rng, name: str, probs: np.ndarray) -> str:
    """A mislabel: most often a look-alike sibling of the same family, else any category (by the tail law)."""
    family = SPECIES_OF[name][1]
    if rng.random() < 0.6:
        siblings = [s[0] for s in SPECIES if s[1] == family and s[0] != name]
        return siblings[int(rng.integers(0, len(siblings)))]
    return CATEGORIES[int(rng.choice(len(CATEGORIES), p=probs))]


def thing_hashtags(rng, attrs: dict, probs: np.ndarray) -> list[str]:
    """Web-like hashtags of an image of ``attrs['category']``: its name with p=0.75, a wrong category with
    p=0.12, its family (p=0.5) and a generic tag (p=0.25), a part (p=0.2), the context (p=0.3), its colour (p=0.2)
    and marking (p=0.25), 0-3 irrelevant tags; synonym, plural and case variants; shuffled."""
    name, family = attrs["category"], attrs["family"]
    generic, parts = FAMILIES[family]
    tags = []
    if rng.random() < 0.75:
        tags.append(name)
    if rng.random() < 0.12:
        tags.append(_wrong_category(rng, name, probs))
    if rng.random() < 0.5:
        tags.append(family)
    if rng.random() < 0.25:
        tags.append(generic[int(rng.integers(0, len(generic)))])
    if rng.random() < 0.2:
        tags.append(parts[int(rng.integers(0, len(parts)))])
    if rng.random() < 0.3:
        tags.append(attrs["context"])
    if rng.random() < 0.2:
        tags.append(attrs["colour"])
    if attrs["marking"] != "plain" and rng.random() < 0.25:
        tags.append(MARKING_TAGS[attrs["marking"]])
    for _ in range(int(rng.integers(0, 4))):
        tags.append(NOISE_TAGS[int(rng.integers(0, len(NOISE_TAGS)))])
    order = rng.permutation(len(tags))
    return ["#" + written_variant(rng, tags[i], _VARIANTS) for i in order]


CONTEXT_PHRASES = {"beach": "at the beach", "snow": "in the snow", "night": "at night", "park": "in the park",
                   "home": "at home"}


def thing_caption(rng, attrs: dict, hashtags, probs: np.ndarray) -> str:
    """A sentence naming the thing ("look at my brown beagle at the beach today #beagle #dog"): the category
    with p=0.7, else its family (0.15), a wrong category (0.1) or just "thing"; its colour sometimes, its
    context sometimes; the hashtags at the end.  Some posts are hashtags only."""
    tags = " ".join(hashtags)
    if rng.random() < P_ONLY_HASHTAGS and tags:
        return tags
    u = rng.random()
    if u < 0.7:
        noun = attrs["category"]
    elif u < 0.85:
        noun = attrs["family"]
    elif u < 0.95:
        noun = _wrong_category(rng, attrs["category"], probs)
    else:
        noun = "thing"
    words = [OPENERS[int(rng.integers(0, len(OPENERS)))]]
    if rng.random() < 0.25:
        words.append(attrs["colour"])
    words.append(noun)
    if rng.random() < 0.3:
        words.append(CONTEXT_PHRASES[attrs["context"]])
    words.append(CLOSERS[int(rng.integers(0, len(CLOSERS)))])
    return " ".join(w for w in words + [tags] if w)


def make_thing(rng, split: str, index: int, size: int, tail: float):
    """(PIL image, metadata fields) of one sample of the ``things`` scene: a training image of a category drawn
    by the tail law with hashtags and a caption, or a labelled evaluation image (classes cycle)."""
    probs = category_probs(tail)
    if split == "train":
        name = CATEGORIES[int(rng.choice(len(CATEGORIES), p=probs))]
    else:
        name = CATEGORIES[index % len(CATEGORIES)]
    img, attrs = render_thing(rng, size, name)
    if split != "train":
        return img, {"label": CATEGORIES.index(name), "class_name": name}
    tags = thing_hashtags(rng, attrs, probs)
    out = {"caption": thing_caption(rng, attrs, tags, probs)}
    if rng.random() < 0.6:
        out["hashtags"] = tags
    return img, out


def manifest_fields(exponent: float) -> dict:
    """What ``synthesize`` records about this scene in manifest.json."""
    return {
        "classes": list(CATEGORIES), "num_classes": len(CATEGORIES),
        "class_definition": "the category of the object (eval splits only; json 'label' indexes 'classes')",
        "families": {family: [s[0] for s in SPECIES if s[1] == family] for family in FAMILIES},
        "true_tags": {"category": list(CATEGORIES), "family": list(FAMILIES),
                      "generic": sorted({g for gen, _ in FAMILIES.values() for g in gen}),
                      "part": sorted({p for _, parts in FAMILIES.values() for p in parts}),
                      "context": list(CONTEXTS), "colour": sorted({s[2] for s in SPECIES}),
                      "marking": sorted(MARKING_TAGS.values())},
        "noise_tags": list(NOISE_TAGS),
        "tail": ({"law": "zipf", "exponent": exponent, "spec": f"zipf:{exponent:g}",
                  "rule": "category k of 'classes' (1-based, listed by rank) is drawn with probability proportional "
                          "to k^-exponent; evaluation labels cycle through the classes",
                  "train": {"category": {"values": list(CATEGORIES),
                                         "probs": [round(float(p), 6) for p in category_probs(exponent)]}},
                  "head_classes": list(HEAD_CLASSES), "tail_classes": list(TAIL_CLASSES)}
                 if exponent else {"law": "uniform", "exponent": 0.0}),
    }
