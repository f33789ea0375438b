"""Captions: the noisy descriptive sentences ``mawstron data synth`` writes, and reading captions back from shards
(to train a tokenizer on them).

A web caption describes its picture the way people do: some attributes named ("my red striped circle"), some
left out, sometimes a wrong word (a square called a circle, red called orange), filler words, and the hashtags
of the post kept at the end ("... today #love #nofilter").  Zero-shot transfer to "a photo of a red circle"
then has to be learnt from that noise, as it is from real alt-text.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

OPENERS = ("my", "look at my", "found a", "just a", "so happy with this", "check out this", "new", "a", "the", "")
CLOSERS = ("today", "lol", "again", "at home", "this morning", "", "", "")
P_DROP_COLOUR, P_DROP_SHAPE, P_WRONG_COLOUR, P_WRONG_SHAPE = 0.2, 0.15, 0.1, 0.1
P_ONLY_HASHTAGS = 0.1  # some posts have no sentence at all


def written_variant(rng: np.random.Generator, tag: str, variants: dict[str, list[str]]) -> str:
    """A canonical tag as people write it: one of its ``variants`` (synonyms, plurals) with p=0.3 where it has any,
    then capitalised (p=0.2) or upper case (p=0.05)."""
    if tag in variants and rng.random() < 0.3:
        tag = variants[tag][int(rng.integers(0, len(variants[tag])))]
    u = rng.random()
    if u < 0.2:
        return tag.capitalize()
    if u < 0.25:
        return tag.upper()
    return tag


def noisy_caption(rng: np.random.Generator, attrs: dict, hashtags: Sequence[str], shapes: Sequence[str],
                  colours: Sequence[str]) -> str:
    """A caption for an image with true ``attrs`` (shape, colour, texture, size, background) followed by its
    ``hashtags`` (as written, with ``#``).  ``shapes``/``colours``: the vocabulary wrong words come from."""
    tags = " ".join(hashtags)
    if rng.random() < P_ONLY_HASHTAGS and tags:
        return tags
    colour, shape = attrs["colour"], attrs["shape"]
    if rng.random() < P_WRONG_COLOUR:
        colour = colours[int(rng.integers(0, len(colours)))]
    if rng.random() < P_WRONG_SHAPE:
        shape = shapes[int(rng.integers(0, len(shapes)))]
    words = [OPENERS[int(rng.integers(0, len(OPENERS)))]]
    if rng.random() < 0.3:
        words.append(attrs["size"])
    if rng.random() >= P_DROP_COLOUR:
        words.append(colour)
    if attrs.get("texture", "plain") != "plain" and rng.random() < 0.4:
        words.append(attrs["texture"])
    words.append(shape if rng.random() >= P_DROP_SHAPE else "thing")
    if rng.random() < 0.2:
        words.append(f"on a {attrs['background']} background")
    words.append(CLOSERS[int(rng.integers(0, len(CLOSERS)))])
    return " ".join(w for w in words + [tags] if w)


def read_captions(shards: Sequence[str], limit: int = 0, *, validate: bool = True, index_dir: str = "") -> Iterator[str]:
    """The caption text of every usable sample of ``shards`` (at most ``limit`` if > 0), in shard order."""
    from ..text import caption_text
    from .shards import build_index, parse_meta
    from .storage import open_shard

    seen = 0
    for shard in shards:
        index = build_index(shard, validate=validate, index_dir=index_dir)  # the index the loaders then reuse
        if not index.samples:
            continue
        with open_shard(shard) as f:
            for s in index.samples:
                f.seek(s.meta[0])
                text = caption_text(parse_meta(f.read(s.meta[1]), s.meta_ext))
                if text:
                    yield text
                    seen += 1
                    if limit and seen >= limit:
                        return
