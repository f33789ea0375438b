"""The run's schedule in one line: global batch, how it splits over ranks, peak lr, steps and images seen.

The global batch (``train.global_batch``) is fixed by the recipe; the GPU count only changes how it is split
(micro-batch x accumulation x ranks), so a paper recipe prints the same schedule on 64 GPUs as on 256.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import RunConfig


@dataclass(frozen=True)
class Schedule:
    """The numbers a run uses on ``world_size`` ranks."""

    global_batch: int
    micro_batch: int
    grad_accum: int
    world_size: int
    peak_lr: float
    warmup_steps: int
    steps: int
    images_seen: int

    @classmethod
    def of(cls, cfg: RunConfig, world_size: int) -> Schedule:
        """``cfg``'s schedule on ``world_size`` ranks (ConfigError when the global batch cannot divide)."""
        t = cfg.train
        global_batch = t.global_batch_for(world_size)
        return cls(global_batch=global_batch, micro_batch=t.micro_batch, grad_accum=t.grad_accum_for(world_size),
                   world_size=world_size, peak_lr=cfg.optim.peak_lr(global_batch),
                   warmup_steps=cfg.optim.warmup_steps, steps=t.steps, images_seen=t.steps * global_batch)

    def format(self) -> str:
        return (f"global batch {self.global_batch} = micro-batch {self.micro_batch} x accumulation "
                f"{self.grad_accum} x {self.world_size} ranks; peak lr {self.peak_lr:.3g}; {self.steps} steps "
                f"({self.warmup_steps} warmup); {self.images_seen:,} images seen")


def format_duration(seconds: float | None) -> str:
    """``3h04m``, ``12m05s``, ``42s``; ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 24:
        return f"{hours // 24}d{hours % 24:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
