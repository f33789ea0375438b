"""Turning a ``RunConfig`` into a sharded, checkpointed model, in a fixed order.

1. construct the ``core`` model under ``deepspeed.zero.Init`` (ZeRO-3): every module's parameters are
   initialised in its constructor and partitioned right after, so no rank ever holds the whole model;
2. load ``checkpoint.init_from`` (the MAE -> WSP handoff) into the partitioned parameters, one gathered
   parameter at a time;
3. activation checkpointing on every k-th transformer block (state-dict names unchanged);
4. parameter groups (weight decay, layer-wise lr decay) and AdamW; the engine is made by the trainer.

``core`` models know none of this.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist

from mawstron.core import LoadReport, adapt_state_dict, check_fit, encoder_state_dict, read_state_dict

from ..checkpoints.store import find_checkpoint_dir, read_zero_checkpoint
from ..config import RunConfig
from ..console import stdout_to_stderr


def construct(cfg: RunConfig, num_classes: int | None):
    """The plain ``core`` model for the run's stage (call under ``zero.Init`` or a device context); for stage
    lit ``num_classes`` is the tokenizer's vocabulary size."""
    return cfg.stage.construct(cfg, num_classes)


def build_model(cfg: RunConfig, num_classes: int | None, ds_config: dict) -> torch.nn.Module:
    """Steps 1-3 above; returns the model ready for ``deepspeed.initialize``."""
    stage = cfg.stage
    if cfg.parallel.zero_stage == 3:
        import deepspeed  # imported when used: `import mawstron.parallel` stays light for the CLI

        zero_init = deepspeed.zero.Init(config_dict_or_path=ds_config)
    else:
        zero_init = contextlib.nullcontext()
    model = stage.build(cfg, num_classes, zero_init)
    if cfg.checkpoint.init_from and not cfg.checkpoint.resume:  # on resume the weights come from the checkpoint
        report = load_encoder(stage.encoder_of(model), cfg.checkpoint.init_from)  # LiT: the image tower
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(f"[mawstron] init_from {cfg.checkpoint.init_from}: loaded {len(report.loaded)} encoder tensors; "
                  f"fresh: {report.missing}; dropped: {len(report.dropped)} decoder/mask-token/head tensors", flush=True)
    stage.prepare(model, cfg)  # activation checkpointing; LiT locks the image tower
    return model


def read_checkpoint_weights(source: str) -> dict[str, torch.Tensor]:
    """All weights of an MAE/WSP checkpoint: a ZeRO checkpoint dir or a consolidated file."""
    ckpt_dir = find_checkpoint_dir(source)  # a checkpoints/ folder or the run folder holding one
    if ckpt_dir:
        with stdout_to_stderr():  # DeepSpeed's merge prints progress; stdout may be a command's JSON
            return read_zero_checkpoint(ckpt_dir)
    if os.path.isfile(source):
        return read_state_dict(source)
    raise FileNotFoundError(
        f"checkpoint.init_from={source!r} is neither a checkpoint directory (with a 'latest' file) nor a weights "
        f"file; point it at an MAE run's checkpoints/ folder or at a consolidated .safetensors"
    )


def split_encoder(state: dict[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """(encoder weights in timm keys, names dropped): the decoder, mask token and any classification head go;
    the run's own head starts fresh."""
    encoder = {k: v for k, v in encoder_state_dict(state).items() if not k.startswith("head.")}
    return encoder, sorted(set(state) - set(encoder))


def _full_shape(t: torch.Tensor) -> tuple:
    return tuple(getattr(t, "ds_shape", t.shape))


def load_encoder(model: torch.nn.Module, source: str) -> LoadReport:
    """Load the encoder found at ``source`` into ``model`` (sharded by ZeRO-3 or not): encoder only, the head
    stays freshly initialised, the decoder and mask token of an MAE source are dropped.

    Rank 0 reads the file; each parameter is gathered, overwritten on rank 0 and re-partitioned in turn, so the
    full model never sits on one device."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    named = dict(model.named_parameters())
    named.update(dict(model.named_buffers()))
    shapes = {name: _full_shape(t) for name, t in named.items()}
    payload = [None]
    if rank == 0:
        encoder, dropped = split_encoder(read_checkpoint_weights(source))
        state, report = adapt_state_dict(encoder, shapes)
        report.dropped = dropped + report.dropped
        report.missing = [k for k in shapes if k not in state]
        report.loaded = sorted(k for k in state if k in shapes)
        report.unexpected = [k for k in state if k not in shapes]
        payload = [(state, report)]
    report = _broadcast_report(payload, rank)
    check_fit(report, strict=True)
    state = payload[0][0] if rank == 0 else {}
    for name, tensor in named.items():
        if name in report.missing:
            continue
        if hasattr(tensor, "ds_id"):  # a ZeRO-3 partition: gather, overwrite on rank 0, re-partition
            import deepspeed

            with deepspeed.zero.GatheredParameters([tensor], modifier_rank=0):
                if rank == 0:
                    with torch.no_grad():
                        tensor.copy_(state[name].to(tensor.dtype))
        elif dist.is_initialized():  # replicated (ZeRO 0-2): rank 0's copy goes to everyone
            value = state[name].to(tensor.device, tensor.dtype) if rank == 0 else torch.empty_like(tensor)
            dist.broadcast(value, 0)
            with torch.no_grad():
                tensor.copy_(value)
        else:
            with torch.no_grad():
                tensor.copy_(state[name].to(tensor.dtype))
    return report


def _broadcast_report(payload: list, rank: int) -> LoadReport:
    """Every rank needs the report (to agree on what to load and to fail together), only rank 0 has it."""
    report = payload[0][1] if rank == 0 else None
    if dist.is_initialized():
        box = [report]
        dist.broadcast_object_list(box, src=0)
        report = box[0]
    return report
