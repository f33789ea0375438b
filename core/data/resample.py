"""Re-sampling a long-tailed hashtag collection, as weakly-supervised pretraining at scale does it.

Mahajan et al. 2018 ("Exploring the Limits of Weakly Supervised Pretraining", Sec. 2.1) and SWAG (Singh et al.
2022, which MAWS trains with unchanged) re-sample the images so that a hashtag's sampling frequency is
proportional to the square root of its natural frequency: tail hashtags are seen more often, head hashtags less.

The rule here.  Let ``n_t`` be the number of images carrying known tag ``t`` (``counts`` in vocab.json, written
by ``mawstron data vocab``), ``T_i`` the known tags of image ``i`` and ``p`` the power (``sqrt``: 0.5,
``inverse``: 0.0, or ``data.resample_power``).  Image ``i`` is drawn with probability proportional to

    w_i = sum over t in T_i of n_t^(p - 1)

which is the same as drawing a tag ``t`` with probability proportional to ``n_t^p`` and then one of its ``n_t``
images uniformly.  If every image had one tag, tag ``t``'s expected share of the sampled stream would be
``n_t * n_t^(p-1) = n_t^p``: the natural share ``f_t`` moves to exactly ``f_t^p`` (renormalised).  Web images carry
several tags (the synthetic ones 3-5, one of them often a head tag such as #love), and a draw made for a tail tag
carries the image's head tags along, so the achieved shares move only part of the way: ``mawstron data stats``
prints the natural, achieved (expected) and target share of every tag.  (Mahajan et al. state the rule per
hashtag; averaging or taking the maximum of the factors instead of the sum moves the shares by about as much.)
An image with no known tag gets ``w_i = 0``: WSP's loss ignores it, so drawing it would only waste a slot.

An epoch is a weighted draw with replacement of ``epoch_size`` images (default: as many as there are), drawn
per rank over that rank's images from ``numpy.random.default_rng([seed, rank, epoch, SALT])``: deterministic
from the seed and the position, so a resumed run draws exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import hashlib
import itertools
import os

import numpy as np

from .shards import ShardIndex, _scan
from .tag_ids import _vocab, scan_tag_ids
from .storage import private_dir

RESAMPLE_MODES = ("none", "sqrt", "inverse")
DEFAULT_POWER = {"sqrt": 0.5, "inverse": 0.0}
_SALT = 0x5A6  # separates the draw's random stream from the loaders' other streams of the same (seed, rank)


def resample_power(mode: str, power: float = -1.0) -> float | None:
    """The power for ``data.resample=mode`` (``None`` for ``none``); ``power`` >= 0 overrides the mode's own."""
    if mode not in RESAMPLE_MODES:
        raise ValueError(f"data.resample must be one of {RESAMPLE_MODES}, got {mode!r}")
    if mode == "none":
        if power >= 0:
            raise ValueError(f"data.resample_power={power} has no effect with data.resample=none; "
                             f"set data.resample=sqrt (or inverse) too")
        return None
    if power < 0:
        return DEFAULT_POWER[mode]
    if power > 1:
        raise ValueError(f"data.resample_power must be in [0, 1] (1 is the natural distribution), got {power}")
    return float(power)


def image_weights(tag_sets: list[list[int]], tag_counts: np.ndarray, power: float) -> np.ndarray:
    """``w_i`` of the module docstring for each image (``tag_sets[i]``: its known tag indices)."""
    lengths, flat = flatten_tag_sets(tag_sets)
    return flat_image_weights(lengths, flat, tag_counts, power)


def flatten_tag_sets(tag_sets: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """``(lengths, ids)``: each image's number of known tags, and all their indices one image after another."""
    lengths = np.array(list(map(len, tag_sets)), dtype=np.int64)
    return lengths, np.fromiter(itertools.chain.from_iterable(tag_sets), dtype=np.int64, count=int(lengths.sum()))


def flat_image_weights(lengths: np.ndarray, flat: np.ndarray, tag_counts: np.ndarray, power: float) -> np.ndarray:
    """``image_weights`` of the tag sets ``flatten_tag_sets`` made (precomputed tag ids come this way)."""
    counts = np.asarray(tag_counts, dtype=np.float64)
    if len(flat) and np.any(counts[flat] <= 0):
        raise ValueError("a tag on an image has no image count in the vocabulary; rebuild vocab.json with "
                         "`mawstron data vocab` over the same shards")
    factor = np.where(counts > 0, np.maximum(counts, 1.0) ** (power - 1.0), 0.0)
    # one pass over all tags (bincount adds each image's factors in order, as factor[tags].sum() does for fewer
    # than 8 tags; numpy's pairwise sum of 8 or more can round differently, so those few keep that sum and the
    # weights stay bit-identical to a per-image sum)
    weights = np.bincount(np.repeat(np.arange(len(lengths)), lengths), weights=factor[flat],
                          minlength=len(lengths)).astype(np.float64)
    starts = np.cumsum(lengths) - lengths
    for i in np.flatnonzero(lengths >= 8):
        weights[i] = factor[flat[starts[i]:starts[i] + lengths[i]]].sum()
    return weights


def tag_shares(tag_sets: list[list[int]], num_tags: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Each tag's share of all tag occurrences, the images weighted by ``weights`` (natural: all ones)."""
    total = np.zeros(num_tags)
    for i, tags in enumerate(tag_sets):
        if len(tags):
            total[list(tags)] += 1.0 if weights is None else weights[i]
    return total / max(total.sum(), 1e-300)


def target_shares(tag_counts: np.ndarray, power: float) -> np.ndarray:
    """The shares the rule aims at: ``f_t^p`` renormalised."""
    f = np.asarray(tag_counts, dtype=np.float64)
    f = f / f.sum()
    g = np.where(f > 0, f ** power, 0.0)
    return g / g.sum()


class EpochDraws:
    """This rank's weighted draws with replacement, one per epoch, from (seed, rank, epoch)."""

    def __init__(self, weights: np.ndarray, *, epoch_size: int, seed: int, rank: int):
        weights = np.asarray(weights, dtype=np.float64)
        if weights.ndim != 1 or not len(weights) or weights.sum() <= 0:
            raise ValueError("data.resample: no image of this rank carries a known hashtag; nothing to draw "
                             "(check data.vocab against data.shards)")
        if epoch_size <= 0:
            raise ValueError(f"the re-sampled epoch size must be positive, got {epoch_size}")
        self.probs = weights / weights.sum()
        self.epoch_size, self.seed, self.rank = int(epoch_size), int(seed), int(rank)
        self._cache: tuple[int, np.ndarray] | None = None

    def epoch(self, e: int) -> np.ndarray:
        """Indices into this rank's sample list, in stream order, for epoch ``e``."""
        if self._cache is None or self._cache[0] != e:
            rng = np.random.default_rng([self.seed, self.rank, e, _SALT])
            self._cache = (e, rng.choice(len(self.probs), size=self.epoch_size, replace=True, p=self.probs))
        return self._cache[1]

    def sample_at(self, position: int) -> int:
        return int(self.epoch(position // self.epoch_size)[position % self.epoch_size])

    def fingerprint(self) -> str:
        """Identifies the draw (weights, size, seed, rank): saved with the loader's position, checked on resume."""
        h = hashlib.sha1(np.round(self.probs, 12).tobytes())
        h.update(f"{self.epoch_size},{self.seed},{self.rank}".encode())
        return h.hexdigest()[:16]


def rank_epoch_size(epoch_size: int, num_rank_samples: int, world_size: int) -> int:
    """This rank's part of ``data.epoch_size`` (0: as many draws as the rank has images)."""
    if epoch_size < 0:
        raise ValueError(f"data.epoch_size must be >= 0 (0: the number of images), got {epoch_size}")
    return max(1, -(-epoch_size // world_size)) if epoch_size else num_rank_samples


def resample_dir(index_dir: str, key: str) -> str:
    """Where a re-sampled loader's index files go (deterministic under ``data.index_dir``, so a resumed run
    rewrites the same files; without it a private folder of this process, removed at exit)."""
    base = os.path.join(index_dir, "resample") if index_dir else private_dir("resample")
    path = os.path.join(base, hashlib.sha1(key.encode()).hexdigest()[:16])
    os.makedirs(path, exist_ok=True)
    return path


def shard_tag_sets(shard: str, vocab_path: str) -> list[list[int]]:
    """The known tag indices of every usable image of one shard: the per-shard task of ``mawstron data stats``."""
    samples, skipped = _scan(shard, validate=False)
    return scan_tag_ids(ShardIndex(shard, "", samples, skipped), _vocab(vocab_path))


def collection_tag_sets(shards: list[str], vocab) -> list[list[int]]:
    """The known tag indices of every usable image of ``shards`` (what ``mawstron data stats`` weighs)."""
    return [t for shard in shards for t in shard_tag_sets(shard, vocab.path)]


def distribution_report(tag_sets: list[list[int]], vocab, power: float) -> dict:
    """Natural, re-sampled (expected under the rule) and target shares of every tag, ranked by image count."""
    counts = vocab.counts()
    weights = image_weights(tag_sets, counts, power)
    natural = tag_shares(tag_sets, len(vocab))
    resampled = tag_shares(tag_sets, len(vocab), weights)
    target = target_shares(counts, power)
    order = np.argsort(-counts, kind="stable")
    return {
        "power": power,
        "images": len(tag_sets),
        "images_without_known_tag": sum(1 for t in tag_sets if not t),
        "tags": [{"rank": r + 1, "tag": vocab.tags[i], "images": int(counts[i]), "natural_share": float(natural[i]),
                  "resampled_share": float(resampled[i]), "target_share": float(target[i])}
                 for r, i in enumerate(order)],
    }
