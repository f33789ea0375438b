"""Exponential moving average of the weights, kept where ZeRO keeps the weights.

Under ZeRO-3 each rank owns one flat partition of every parameter (``param.ds_tensor``); the full tensor exists
only while a module runs.  The EMA follows the same layout: each rank keeps an fp32 average of *its own
partitions*, so the EMA costs 4 bytes per parameter divided by the world size, and updating it is local (no
communication).  With ZeRO 0-2 every rank holds whole parameters and averages them all (identical on every
rank).

To evaluate or export the average, ``swapped_in()`` copies it into the partitions and restores the trained
values afterwards.  Parameters that are currently gathered (ZeRO-3's small "persistent" parameters, gathered
once and kept) are re-partitioned and re-gathered so that their full copies show the average too.  The
optimizer's fp32 master partitions are never touched.

The first ``update()`` starts the average at the current weights (DeiT's ``ModelEma`` starts at the initial
weights; starting after the first step avoids averaging in a freshly initialised head).  Each rank saves its
partitions' average as ``ema_rank<r>.pt`` in the checkpoint's folder at the trainer's periodic and final saves
(parallel/training/periodic_eval.py), and a resumed run continues from the EMA of the checkpoint it actually loaded
(the one that verified, which is not always the one ``latest`` names); a checkpoint without it restarts the average
from the resumed weights, and says so.  On another number of ranks (N -> M, beside DeepSpeed's universal load of
the weights) every new rank reads the N files, puts each parameter's flat average back together and keeps its own
ZeRO-3 partition of it (``load_resharded``): the layout is DeepSpeed's, ``ceil(numel / world)`` elements per rank,
zero-padded at the end.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist


def _is_zero3(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")


def _local(param: torch.Tensor) -> torch.Tensor:
    """This rank's copy of ``param``: its ZeRO-3 partition, or the whole tensor."""
    return param.ds_tensor if _is_zero3(param) else param.data


def _gathered(params: list) -> list:
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    return [p for p in params if _is_zero3(p) and p.ds_status == ZeroParamStatus.AVAILABLE]


def _refresh(params: list) -> None:
    """Re-gather ZeRO-3 parameters that sit gathered, so their full copies reflect their (changed) partitions."""
    if params:
        params[0].partition(param_list=params)
        params[0].all_gather(param_list=params)


class WeightEMA:
    def __init__(self, module: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.shadow: list[torch.Tensor] | None = None
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current weights in: ``ema = decay * ema + (1 - decay) * w`` (call after each optimizer step)."""
        if self.shadow is None:
            self.shadow = [_local(p).detach().float().clone() for _, p in self.named]
        else:
            for s, (_, p) in zip(self.shadow, self.named):
                s.lerp_(_local(p).float(), 1.0 - self.decay)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "names": [n for n, _ in self.named],
                "shadow": [s.cpu() for s in self.shadow] if self.shadow is not None else None}

    def load_state_dict(self, state: dict) -> None:
        names = [n for n, _ in self.named]
        if state["names"] != names:
            raise ValueError("the saved EMA was kept for other parameters; it cannot continue in this model")
        self.updates = int(state["updates"])
        self.shadow = None if state["shadow"] is None else [
            s.to(_local(p).device) for s, (_, p) in zip(state["shadow"], self.named)]

    @torch.no_grad()
    def load_resharded(self, states: list[dict]) -> None:
        """Continue from the EMA that a run of ``len(states)`` ranks saved (``states[r]``: its rank ``r``'s
        ``state_dict()``), on this process group's world size: ZeRO-3 partitions are joined, trimmed of their
        padding and re-split for this rank; whole parameters (ZeRO 0-2) are taken from rank 0's file."""
        names = [n for n, _ in self.named]
        for r, state in enumerate(states):
            if state["names"] != names:
                raise ValueError(f"the saved EMA of rank {r} was kept for other parameters; it cannot continue in "
                                 f"this model")
        self.updates = int(states[0]["updates"])
        if any(state["shadow"] is None for state in states):
            self.shadow = None
            return
        rank = dist.get_rank() if dist.is_initialized() else 0
        world = dist.get_world_size() if dist.is_initialized() else 1
        shadow = []
        for i, (name, p) in enumerate(self.named):
            local = _local(p)
            full_shape = p.ds_shape if _is_zero3(p) else p.shape
            numel = full_shape.numel()
            pieces = [state["shadow"][i] for state in states]
            if pieces[0].shape == full_shape:  # whole parameters (ZeRO 0-2, or one ZeRO-3 rank of a 1-D one)
                full = pieces[0].reshape(-1)
            else:
                full = torch.cat([x.reshape(-1) for x in pieces])
                if full.numel() < numel:
                    raise ValueError(f"the saved EMA of {name} holds {full.numel()} of its {numel} elements; the "
                                     f"checkpoint's EMA files are incomplete")
                full = full[:numel]
            if _is_zero3(p):
                part = local.numel()
                full = torch.nn.functional.pad(full.float(), (0, part * world - numel))
                shadow.append(full[rank * part:(rank + 1) * part].reshape(local.shape).clone().to(local.device))
            else:
                shadow.append(full.float().reshape(full_shape).clone().to(local.device))
        self.shadow = shadow

    @contextlib.contextmanager
    @torch.no_grad()
    def swapped_in(self):
        """The model computes with the average inside the block (every rank must enter it: ZeRO-3 collectives)."""
        if self.shadow is None:
            yield
            return
        params = [p for _, p in self.named]
        backup = [_local(p).clone() for p in params]
        gathered = _gathered(params)
        for s, p in zip(self.shadow, params):
            _local(p).copy_(s.to(_local(p).dtype))
        _refresh(gathered)
        try:
            yield
        finally:
            for b, p in zip(backup, params):
                _local(p).copy_(b)
            _refresh(gathered)

    @torch.no_grad()
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights as full CPU tensors on rank 0 (``{}`` elsewhere), one parameter gathered at a
        time; a collective under ZeRO-3."""
        rank = dist.get_rank() if dist.is_initialized() else 0
        out = {}
        with self.swapped_in():
            for name, p in self.named:
                if _is_zero3(p):
                    import deepspeed

                    with deepspeed.zero.GatheredParameters([p]):
                        if rank == 0:
                            out[name] = p.data.detach().float().cpu().clone()
                elif rank == 0:
                    out[name] = p.data.detach().float().cpu().clone()
        return out
