"""What the DALI and PyTorch shard loaders share: this rank's shards and indexes, targets, counters."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .shards import Sample, Vocab, assign_shards, build_index, expand_shards, parse_meta, read_num_classes
from .resample import EpochDraws, flat_image_weights, flatten_tag_sets, rank_epoch_size, resample_power
from .tag_ids import LazyShardIndex, lazy_shard_index, load_tag_ids, scan_tag_ids

@dataclass(frozen=True)
class BatchSpec:
    """What a training stage's batches hold, as the loaders see it (``parallel/stages/`` answers the rest): the
    loaders ask this instead of comparing stage names."""

    labels: str  # "none"; "hashtags": multi-hot over data.vocab (WSP); "classes": one-hot of the json label
    captions: bool  # tokenized captions (input_ids, attention_mask) for LiT
    crop_scale: tuple[float, float]  # RandomResizedCrop's area range

    @property
    def reads_meta(self) -> bool:
        """Whether a batch needs each sample's json metadata (labels or captions)."""
        return self.labels != "none" or self.captions


# Crops: MAE uses (0.2, 1.0) (He et al. 2022); WSP and fine-tuning use the standard Inception crop (0.08, 1.0)
# (Szegedy et al. 2015), as SWAG/MAWS pretraining does.  LiT: the caption describes the whole picture, so crops
# keep most of it (LiT's inception crop is for 224 px photos; on the 32 px synthetic images a 8% crop often cuts
# the object out).
BATCHES = {"mae": BatchSpec("none", False, (0.2, 1.0)), "wsp": BatchSpec("hashtags", False, (0.08, 1.0)),
           "finetune": BatchSpec("classes", False, (0.08, 1.0)), "lit": BatchSpec("none", True, (0.4, 1.0))}
CROP_SCALE = {stage: spec.crop_scale for stage, spec in BATCHES.items()}
CROP_RATIO = (3 / 4, 4 / 3)
STAGES = tuple(BATCHES)


def batch_spec(stage: str) -> BatchSpec:
    """The batches of ``train.stage=stage``; ValueError naming the choices for an unknown stage."""
    if stage not in BATCHES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    return BATCHES[stage]


def crop_scale(cfg, stage: str) -> tuple[float, float]:
    """The stage's crop area range, or ``(data.min_crop_area, 1)`` when that is set (small images with one
    object: an 8% crop of a 32 px image rarely still shows the object its hashtags name)."""
    minimum = getattr(cfg, "min_crop_area", 0.0)
    return (minimum, 1.0) if minimum else CROP_SCALE[stage]


class WorkerStridedBatches(torch.utils.data.IterableDataset):
    """The endless stream ``make_batch(start), make_batch(start + 1), ...`` (``make_batch`` is the subclass's):
    DataLoader worker ``w`` of ``W`` makes batches ``start + w, start + w + W, ...``, which the DataLoader's
    round-robin over workers puts back in order, so the stream is the same for any number of workers."""

    def make_batch(self, k: int) -> dict:
        raise NotImplementedError

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        k = self.start + worker
        while True:
            yield self.make_batch(k)
            k += workers


class RankSamples(Sequence):
    """This rank's samples as ``(shard path, Sample)``: the usable shards' samples one shard after another, every
    ``sub_world``-th from ``sub_rank`` (fewer shards than ranks).  Built from the shards' sample counts, so a shard
    whose index is read lazily (tag_ids.LazyShardIndex) is only read when one of its samples is asked for."""

    def __init__(self, indexes: list, sub_rank: int, sub_world: int):
        self.indexes, self.sub_rank, self.sub_world = indexes, sub_rank, sub_world
        self.ends = np.cumsum([ix.count for ix in indexes]).tolist()
        self.n = len(range(sub_rank, self.ends[-1] if self.ends else 0, sub_world))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"sample {i} of {self.n}")
        j = self.sub_rank + i * self.sub_world
        k = bisect.bisect_right(self.ends, j)
        ix = self.indexes[k]
        return ix.path, ix.samples[j - (self.ends[k - 1] if k else 0)]

    def __iter__(self):
        j = self.sub_rank
        for k, ix in enumerate(self.indexes):
            start = self.ends[k - 1] if k else 0
            while j < self.ends[k]:
                yield ix.path, ix.samples[j - start]
                j += self.sub_world


class RankShards:
    """Shards of ``cfg.shards`` that ``rank`` reads, their indexes, and what indexing left out."""

    def __init__(self, cfg, *, stage: str, rank: int, world_size: int, tokenizer=None):
        self.batches = batch_spec(stage)
        self.stage = stage
        if self.batches.captions and tokenizer is None:
            raise ValueError(f"stage {stage} needs a tokenizer for the captions")
        self.tokenizer = tokenizer
        self.all_shards = expand_shards(cfg.shards, check_remote=False)  # checked once by `mawstron train`
        self.paths, self.sub_rank, self.sub_world = assign_shards(self.all_shards, rank, world_size)
        self.cfg, self.rank = cfg, rank
        self.tag_ids_used = 0  # shards whose precomputed tag ids served the last tag_ids()
        self.vocab = Vocab(cfg.vocab) if self.batches.labels == "hashtags" else None
        self.load_indexes(validate=cfg.validate)
        if self.vocab is not None:
            self.num_classes = len(self.vocab)
        elif self.batches.labels == "classes":
            self.num_classes = read_num_classes(self.all_shards)
            self.check_labels()
        else:
            self.num_classes = None

    def check_labels(self) -> None:
        """Fine-tuning: every sample of this rank has an integer json ``label`` below ``num_classes``, checked when
        the rank starts (one read of each sample's small metadata member) rather than when a batch meets it
        mid-training.  ValueError naming the shard, the sample, the label and the fix."""
        bad, first = 0, None
        for path, s in self.samples:
            with open(path, "rb") as f:
                f.seek(s.meta[0])
                try:
                    label = parse_meta(f.read(s.meta[1]), s.meta_ext).get("label")
                except Exception:  # noqa: BLE001 - unreadable metadata is this sample's bad label
                    label = "unreadable"
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < self.num_classes:
                bad += 1
                first = first or (path, s.key, label)
        if bad:
            path, key, label = first
            raise ValueError(f"{path}: sample {key!r} has label {label!r}, outside 0..{self.num_classes - 1} "
                             f"(num_classes from the shards' manifest.json or their largest label), and "
                             f"{bad - 1} more samples of rank {self.rank} are out of range; fix the labels or "
                             f"manifest.json's num_classes")

    def load_indexes(self, *, validate: bool, force: bool = False) -> int:
        """(Re)build this rank's indexes; returns the number of usable samples.  With ``data.resample``, a shard
        with precomputed tag ids (``mawstron data tags``) starts from that file alone and its index is read when
        a loader first reads the shard (tag_ids.LazyShardIndex); ``force`` reads (rebuilds) every index now."""
        cfg = self.cfg
        lazy = not force and self.vocab is not None and getattr(cfg, "resample", "none") != "none"
        self.indexes = [(lazy and lazy_shard_index(p, self.vocab, validate=validate, index_dir=cfg.index_dir))
                        or build_index(p, validate=validate, index_dir=cfg.index_dir, force=force) for p in self.paths]
        self.skipped_by_shard = {ix.path: sum(ix.skipped.values()) for ix in self.indexes}
        self.skipped_by_reason = Counter()
        for ix in self.indexes:
            self.skipped_by_reason.update(ix.skipped)
        self.usable = [ix for ix in self.indexes if ix.count]
        if not self.usable:
            raise ValueError(f"data.shards={cfg.shards!r}: rank {self.rank} has no readable sample in "
                             f"{[ix.path for ix in self.indexes]} (skipped: {dict(self.skipped_by_reason)})")
        # the flat sample list of the PyTorch path (DALI splits by shard_id/num_shards itself)
        self.samples: Sequence[tuple[str, Sample]] = RankSamples(self.usable, self.sub_rank, self.sub_world)
        return sum(ix.count for ix in self.usable)

    def resample_draws(self, *, seed: int, world_size: int):
        """This rank's weighted epoch draws over ``self.samples`` for ``data.resample`` (resample.py), or
        ``None`` when the stream is not re-sampled (``data.resample=none``, or a stage without hashtags)."""
        power = resample_power(self.cfg.resample, self.cfg.resample_power)
        if power is None:
            return None
        if self.batches.labels != "hashtags":
            raise ValueError(f"data.resample={self.cfg.resample} re-samples by hashtag, which only WSP has; "
                             f"use data.resample=none for {self.stage}")
        counts = self.vocab.counts()
        weights = flat_image_weights(*self.tag_ids(), counts, power)
        size = rank_epoch_size(self.cfg.epoch_size, len(self.samples), world_size)
        return EpochDraws(weights, epoch_size=size, seed=seed, rank=self.rank)

    def tag_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """Known tag indices of each of ``self.samples`` as ``(lengths, ids)`` (resample.flatten_tag_sets): from
        the precomputed tag ids beside each shard's index (``mawstron data tags``, tag_ids.py) where they exist,
        else from every sample's metadata."""
        lengths, ids = [], []
        self.tag_ids_used = 0
        for ix in self.usable:
            found = ix.tags if isinstance(ix, LazyShardIndex) else load_tag_ids(ix, self.vocab)
            if found is None:
                found = flatten_tag_sets(scan_tag_ids(ix, self.vocab))
            else:
                self.tag_ids_used += 1
            lengths.append(found[0])
            ids.append(found[1])
        lengths, ids = np.concatenate(lengths), np.concatenate(ids)
        if self.sub_world == 1:
            return lengths, ids
        starts = np.cumsum(lengths) - lengths  # fewer shards than ranks: this rank's every sub_world-th sample
        return flatten_tag_sets([ids[starts[i]:starts[i] + lengths[i]].tolist()
                                 for i in range(self.sub_rank, len(lengths), self.sub_world)])

    def captions(self, metas: list[dict]) -> dict[str, torch.Tensor]:
        """Stage lit: the batch's captions as ``{"input_ids", "attention_mask"}`` (see core/text.py)."""
        from ..text import caption_text, tokenize

        return tokenize(self.tokenizer, [caption_text(m) for m in metas])

    def targets(self, metas: list[dict]) -> tuple[torch.Tensor | None, int]:
        """Targets for a batch of metadata dicts and how many images had no known hashtag."""
        if self.batches.labels == "none":
            return None, 0
        out = torch.zeros(len(metas), self.num_classes)
        missing = 0
        for i, meta in enumerate(metas):
            if self.vocab is not None:
                idx = self.vocab.indices(meta)
                if idx:
                    out[i, idx] = 1.0
                else:
                    missing += 1
            else:
                label = meta.get("label")
                if not isinstance(label, int) or not 0 <= label < self.num_classes:
                    raise ValueError(f"fine-tuning sample without a valid json 'label' (got {label!r}); "
                                     f"use labelled shards such as eval-train-*.tar")
                out[i, label] = 1.0
        return out, missing

    def stats(self, images_seen: int, no_known_hashtag: int, runtime_skips: Counter | None = None) -> dict:
        by_reason = Counter(self.skipped_by_reason)
        by_shard = Counter(self.skipped_by_shard)
        for (reason, shard), n in (runtime_skips or {}).items():
            by_reason[reason] += n
            by_shard[shard] += n
        worst = [[s, n] for s, n in sorted(by_shard.items(), key=lambda kv: (-kv[1], kv[0])) if n][:5]
        return {
            "images_seen": images_seen,
            "skipped": sum(by_reason.values()),
            "skipped_by_reason": dict(by_reason),
            "worst_shards": worst,
            "no_known_hashtag": no_known_hashtag,
            "shards": [ix.path for ix in self.indexes],
        }


def check_resample_state(state: dict, draws) -> None:
    """A saved data position belongs to one re-sampling draw: resuming it under another would silently change
    the stream, so say which setting differs."""
    saved, now = state.get("resample"), draws.fingerprint() if draws is not None else None
    if saved != now:
        raise ValueError(f"this checkpoint's data position was saved with re-sampling draw {saved!r}, this run "
                         f"draws {now!r}: resume with the data.resample, data.resample_power, data.epoch_size, "
                         f"data.vocab and train.seed it was trained with")


def decode_metas(meta_rows: np.ndarray, ext_hint: str | None = None) -> list[dict]:
    """Rows of zero-padded json/txt bytes (DALI's padded output) -> dicts."""
    out = []
    for row in meta_rows:
        raw = bytes(row).rstrip(b"\0")
        ext = ext_hint or ("json" if raw[:1] == b"{" else "txt")
        out.append(parse_meta(raw, ext))
    return out
