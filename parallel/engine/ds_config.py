"""The DeepSpeed JSON config, derived from a ``RunConfig``.

ZeRO-3 defaults follow what works for billion-parameter transformers (DeepSpeed's own guidance and the sizes
Hugging Face's integration derives from the hidden size): buckets of ``width^2`` elements, prefetch a little
less, keep parameters smaller than ``10 * width`` permanently gathered (norms, biases: gathering them costs more
in latency than they weigh), overlap communication with compute, and contiguous gradient buffers.
"""

from __future__ import annotations

from ..config import RunConfig


def zero_bucket_sizes(cfg: RunConfig, width: int) -> dict:
    p = cfg.parallel
    return {
        "reduce_bucket_size": p.reduce_bucket_size or width * width,
        "stage3_prefetch_bucket_size": p.prefetch_bucket_size or int(0.9 * width * width),
        "stage3_param_persistence_threshold": p.param_persistence_threshold or 10 * width,
    }


def build_ds_config(cfg: RunConfig, world_size: int, width: int) -> dict:
    """DeepSpeed config for ``world_size`` ranks training a model of hidden size ``width``.

    The optimizer is built by the trainer (parameter groups with per-group weight decay and lr scale), so the
    config has no "optimizer" section; the learning rate is set by the trainer every step.
    """
    p, t = cfg.parallel, cfg.train
    zero: dict = {"stage": p.zero_stage}
    if p.zero_stage >= 2:
        zero.update(overlap_comm=p.overlap_comm, contiguous_gradients=p.contiguous_gradients)
        zero.update({k: v for k, v in zero_bucket_sizes(cfg, width).items() if k == "reduce_bucket_size"})
    if p.zero_stage == 3:
        zero.update(zero_bucket_sizes(cfg, width))
        zero.update(
            stage3_max_live_parameters=p.max_live_parameters,
            stage3_max_reuse_distance=p.max_reuse_distance,
            stage3_gather_16bit_weights_on_model_save=False,  # consolidation reads the shards offline instead
        )
    for section, device in (("offload_optimizer", p.offload_optimizer), ("offload_param", p.offload_params)):
        if device != "none":
            zero[section] = {"device": device, "pin_memory": True}
            if device == "nvme":
                zero[section]["nvme_path"] = p.nvme_path
    ds = {
        "train_micro_batch_size_per_gpu": t.micro_batch,
        "gradient_accumulation_steps": t.grad_accum_for(world_size),
        "train_batch_size": t.global_batch_for(world_size),
        "zero_optimization": zero,
        "gradient_clipping": cfg.optim.grad_clip,
        "steps_per_print": 10**9,  # the trainer logs; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    if p.precision == "bf16":
        ds["bf16"] = {"enabled": True}
    elif p.precision == "fp16":
        ds["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    return ds
