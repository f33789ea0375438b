"""Per-GPU memory plan for ZeRO-3 training: will it fit, and on how many GPUs.

Model states follow DeepSpeed's own ZeRO-3 estimator (``estimate_zero3_model_states_mem_needs``): 18 bytes per
parameter spread over the GPUs (bf16 parameter 2 + gradient 4 + fp32 master weight, Adam first and second
moments 12), plus the largest layer gathered in full (4 bytes per parameter); with optimizer offload the GPU keeps
2 bytes per parameter, with parameter offload only the gathered layer.

Activations (bf16, fused attention so no seq x seq matrix is stored) follow Korthikanti et al. 2022
("Reducing activation recomputation in large transformer models"): 34 * s * b * h bytes per block for
sequence length s, micro-batch b, width h.  With a block checkpointed only its input (2 * s * b * h bytes) is
kept, and one block's activations are rebuilt at a time during the backward.  Everything is computed from
shapes (the model is built on the meta device).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

import torch

from mawstron.core import MAEConfig, count_parameters, create_clip, create_mae, create_vit, forward_flops, vit_config
from mawstron.core.clip import text_flops

from ..stages import get_stage

GIB = 2**30
BYTES_PER_PARAM_ZERO3 = 18  # DeepSpeed's estimator: params 2 + grads 4 + optimizer states 12
PARAM_BYTES, GRAD_BYTES, OPTIM_BYTES = 2, 4, 12
ACT_BYTES_PER_TOKEN_PER_WIDTH = 34  # per block, bf16, no attention matrix stored
RESERVE_FRACTION = 0.10  # CUDA context, NCCL buffers, allocator fragmentation


@dataclass
class MemoryPlan:
    model: str
    stage: str
    gpus: int
    gpu_mem_gib: float
    micro_batch: int
    total_params: int
    largest_layer_params: int
    params_gib: float
    grads_gib: float
    optimizer_gib: float
    gathered_layer_gib: float
    activations_gib: float  # with the requested activation checkpointing
    activations_no_checkpointing_gib: float
    activations_full_checkpointing_gib: float
    total_gib: float
    usable_gib: float
    fits: bool
    forward_gflops_per_image: float
    train_gflops_per_image: float
    # stage lit only: the text tower (+ projections, logit scale) trained, the image tower frozen unless unlocked,
    # and the contrastive loss's all-gathered features and logits
    text_params: int = 0
    frozen_params: int = 0
    contrastive_gib: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def model_shape_stats(model_name: str, stage: str, mae: MAEConfig | None = None, num_classes: int = 0,
                      **overrides) -> tuple[int, int, int]:
    """(total parameters, trainable parameters, largest single module's own parameters), on the meta device.

    Frozen parameters (MAE's sin-cos position tables) have no gradient and no optimizer state."""
    with torch.device("meta"):
        if get_stage(stage).flops_mode == "mae":  # the encoder on visible tokens and the decoder
            model = create_mae(model_name, mae=mae or MAEConfig(), **overrides)
        else:
            model = create_vit(model_name, num_classes=num_classes, **overrides)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return count_parameters(model), count_parameters(model, trainable_only=True), largest


def _stack_activation_bytes(tokens: int, width: int, depth: int, micro_batch: int, checkpoint_every: int) -> float:
    per_block = ACT_BYTES_PER_TOKEN_PER_WIDTH * tokens * width * micro_batch
    if checkpoint_every <= 0 or depth == 0:
        return depth * per_block
    checkpointed = (depth + checkpoint_every - 1) // checkpoint_every
    kept_inputs = checkpointed * 2 * tokens * width * micro_batch
    return kept_inputs + (depth - checkpointed) * per_block + per_block  # + one block rebuilt in the backward


def activation_bytes(model_name: str, stage: str, micro_batch: int, checkpoint_every: int,
                     mae: MAEConfig | None = None, **overrides) -> float:
    cfg = vit_config(model_name, **overrides)
    if get_stage(stage).flops_mode == "mae":
        mae = mae or MAEConfig()
        enc = _stack_activation_bytes(1 + mae.num_visible(cfg.num_patches), cfg.embed_dim, cfg.depth, micro_batch,
                                      checkpoint_every)
        dec = _stack_activation_bytes(1 + cfg.num_patches, mae.decoder_embed_dim, mae.decoder_depth, micro_batch,
                                      checkpoint_every)
        return enc + dec
    return _stack_activation_bytes(1 + cfg.num_patches, cfg.embed_dim, cfg.depth, micro_batch, checkpoint_every)


def model_state_bytes(total_params: int, largest_layer_params: int, gpus: int, offload_optimizer: bool = False,
                      offload_params: bool = False, trainable_params: int | None = None) -> dict:
    """Per-GPU bytes of parameters, gradients, optimizer states and the gathered layer (DeepSpeed's accounting).

    Measured on a real ZeRO-3 bf16 run (``zero_partition.json``): parameters 2 bytes each, fp32 master weight
    4 + Adam moments 8 per trainable parameter, gradients a 2-byte partition held throughout plus fp32 copies
    made for the optimizer step; DeepSpeed's estimator books the gradients at 4 bytes, and so do we."""
    trainable = total_params if trainable_params is None else trainable_params
    gathered = 4 * largest_layer_params
    if offload_params:
        return {"params": 0.0, "grads": 0.0, "optimizer": 0.0, "gathered_layer": gathered}
    if offload_optimizer:
        return {"params": PARAM_BYTES * total_params / gpus, "grads": 0.0, "optimizer": 0.0, "gathered_layer": gathered}
    return {
        "params": PARAM_BYTES * total_params / gpus,
        "grads": GRAD_BYTES * trainable / gpus,
        "optimizer": OPTIM_BYTES * trainable / gpus,
        "gathered_layer": gathered,
    }


def lit_shape_stats(model_name: str, lit, **overrides) -> dict:
    """Parameter counts of a CLIP for stage lit, on the meta device: text tower (with projections and logit
    scale), image tower, and the largest single module (XLM-R's 250k-token embedding for the release's towers)."""
    key = (model_name, repr(dataclasses.replace(lit, unlock_image=False)), tuple(sorted(overrides.items())))
    if key in _LIT_STATS:  # min_gpus plans many GPU counts for one model
        return _LIT_STATS[key]
    with torch.device("meta"):
        model = create_clip(model_name, dataclasses.replace(lit, text_model=""), **overrides)
    vision = count_parameters(model.vision_encoder)
    total = count_parameters(model)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    _LIT_STATS[key] = {"total": total, "vision": vision, "text": total - vision, "largest": largest}
    return _LIT_STATS[key]


_LIT_STATS: dict = {}


def contrastive_bytes(micro_batch: int, gpus: int, embed_dim: int) -> float:
    """Per-GPU bytes of the global-batch loss: both towers' features gathered from every GPU (fp32) and the
    local rows' logits against all columns, both directions, with their gradients."""
    global_batch = micro_batch * gpus
    return 4 * (2 * global_batch * embed_dim + 2 * 2 * micro_batch * global_batch)


def plan_lit(model_name: str, lit, gpus: int, gpu_mem_gib: float, micro_batch: int, checkpoint_every: int = 1,
             offload_optimizer: bool = False, offload_params: bool = False, **overrides) -> MemoryPlan:
    """The plan of stage lit: the image tower's parameters only (bf16, sharded) unless ``lit.unlock_image``,
    the text tower's full model states, activations of the text tower (and of one image block: the locked tower
    runs under no_grad and keeps nothing), and the contrastive all-gather."""
    stats = lit_shape_stats(model_name, lit, **overrides)
    trainable = stats["total"] if lit.unlock_image else stats["text"]
    states = model_state_bytes(stats["total"], stats["largest"], gpus, offload_optimizer, offload_params, trainable)
    vit = vit_config(model_name, **overrides)
    text_acts = _stack_activation_bytes(lit.max_length, lit.text_width, lit.text_depth, micro_batch, checkpoint_every)
    if lit.unlock_image:
        image_acts = _stack_activation_bytes(1 + vit.num_patches, vit.embed_dim, vit.depth, micro_batch, checkpoint_every)
    else:
        image_acts = ACT_BYTES_PER_TOKEN_PER_WIDTH * (1 + vit.num_patches) * vit.embed_dim * micro_batch
    gather = contrastive_bytes(micro_batch, gpus, lit.embed_dim)
    acts = text_acts + image_acts
    total_bytes = sum(states.values()) + acts + gather
    usable = gpu_mem_gib * (1 - RESERVE_FRACTION)
    image_fwd = forward_flops(vit, "features")
    fwd = image_fwd + text_flops(lit)
    train = 3 * text_flops(lit) + (3 if lit.unlock_image else 1) * image_fwd
    no_ckpt = _stack_activation_bytes(lit.max_length, lit.text_width, lit.text_depth, micro_batch, 0) + image_acts
    full_ckpt = _stack_activation_bytes(lit.max_length, lit.text_width, lit.text_depth, micro_batch, 1) + image_acts
    return MemoryPlan(
        model=model_name, stage="lit", gpus=gpus, gpu_mem_gib=gpu_mem_gib, micro_batch=micro_batch,
        total_params=stats["total"], largest_layer_params=stats["largest"],
        params_gib=states["params"] / GIB, grads_gib=states["grads"] / GIB, optimizer_gib=states["optimizer"] / GIB,
        gathered_layer_gib=states["gathered_layer"] / GIB, activations_gib=acts / GIB,
        activations_no_checkpointing_gib=no_ckpt / GIB, activations_full_checkpointing_gib=full_ckpt / GIB,
        total_gib=total_bytes / GIB, usable_gib=usable, fits=total_bytes / GIB <= usable,
        forward_gflops_per_image=fwd / 1e9, train_gflops_per_image=train / 1e9,
        text_params=stats["text"], frozen_params=0 if lit.unlock_image else stats["vision"],
        contrastive_gib=gather / GIB,
    )


def plan(model_name: str, stage: str, gpus: int, gpu_mem_gib: float, micro_batch: int, checkpoint_every: int = 1,
         num_classes: int = 0, mae: MAEConfig | None = None, offload_optimizer: bool = False,
         offload_params: bool = False, lit=None, **overrides) -> MemoryPlan:
    if gpus <= 0 or micro_batch <= 0 or gpu_mem_gib <= 0:
        raise ValueError("gpus, micro_batch and gpu_mem_gib must be positive")
    if get_stage(stage).text_tower:
        if lit is None:
            raise ValueError("a plan for stage lit needs the text tower: pass lit=LitConfig(...)")
        return plan_lit(model_name, lit, gpus, gpu_mem_gib, micro_batch, checkpoint_every, offload_optimizer,
                        offload_params, **overrides)
    stage_for_model = get_stage(stage).flops_mode  # the MAE model, or the classifier (WSP, fine-tuning)
    total, trainable, largest = model_shape_stats(model_name, stage_for_model, mae, num_classes, **overrides)
    states = model_state_bytes(total, largest, gpus, offload_optimizer, offload_params, trainable)
    acts = activation_bytes(model_name, stage_for_model, micro_batch, checkpoint_every, mae, **overrides)
    total_bytes = sum(states.values()) + acts
    usable = gpu_mem_gib * (1 - RESERVE_FRACTION)
    cfg = vit_config(model_name, num_classes=num_classes, **overrides)
    fwd = forward_flops(cfg, stage_for_model, mae)
    return MemoryPlan(
        model=model_name, stage=stage, gpus=gpus, gpu_mem_gib=gpu_mem_gib, micro_batch=micro_batch,
        total_params=total, largest_layer_params=largest,
        params_gib=states["params"] / GIB, grads_gib=states["grads"] / GIB, optimizer_gib=states["optimizer"] / GIB,
        gathered_layer_gib=states["gathered_layer"] / GIB,
        activations_gib=acts / GIB,
        activations_no_checkpointing_gib=activation_bytes(model_name, stage_for_model, micro_batch, 0, mae, **overrides) / GIB,
        activations_full_checkpointing_gib=activation_bytes(model_name, stage_for_model, micro_batch, 1, mae, **overrides) / GIB,
        total_gib=total_bytes / GIB, usable_gib=usable, fits=total_bytes / GIB <= usable,
        forward_gflops_per_image=fwd / 1e9, train_gflops_per_image=3 * fwd / 1e9,
    )


def min_gpus(model_name: str, stage: str, gpu_mem_gib: float, micro_batch: int, limit: int = 65536, **kwargs) -> int | None:
    """Smallest GPU count (a power of two) on which the plan fits; None if even ``limit`` GPUs do not."""
    gpus = 1
    while gpus <= limit:
        if plan(model_name, stage, gpus, gpu_mem_gib, micro_batch, **kwargs).fits:
            return gpus
        gpus *= 2
    return None


def format_plan(p: MemoryPlan) -> str:
    rows = [
        ("parameters (bf16)", p.params_gib),
        ("gradients", p.grads_gib),
        ("optimizer states (fp32 master, Adam m and v)", p.optimizer_gib),
        ("largest layer gathered", p.gathered_layer_gib),
        ("activations (as configured)", p.activations_gib),
        ("total", p.total_gib),
    ]
    lines = [f"{p.model} {p.stage}: {p.total_params / 1e9:.3f}B parameters, {p.gpus} GPUs x {p.gpu_mem_gib:g} GiB, "
             f"micro-batch {p.micro_batch} per GPU"]
    if get_stage(p.stage).text_tower:
        rows.insert(5, ("contrastive all-gather (features, logits)", p.contrastive_gib))
        lines.append(f"  text tower {p.text_params / 1e6:.1f}M parameters (trained); image tower "
                     f"{(p.total_params - p.text_params) / 1e6:.1f}M ("
                     f"{'frozen: parameters only' if p.frozen_params else 'unlocked: trained'})")
    lines += [f"  {name:<48}{gib:>10.2f} GiB per GPU" for name, gib in rows]
    lines.append(f"  activations without checkpointing {p.activations_no_checkpointing_gib:.2f} GiB, "
                 f"every block checkpointed {p.activations_full_checkpointing_gib:.2f} GiB")
    lines.append(f"  usable {p.usable_gib:.1f} GiB (keeping {RESERVE_FRACTION:.0%} for CUDA/NCCL/fragmentation): "
                 f"{'FITS' if p.fits else 'DOES NOT FIT'}")
    lines.append(f"  FLOPs per image: forward {p.forward_gflops_per_image:.1f} GFLOP, train {p.train_gflops_per_image:.1f} GFLOP")
    return "\n".join(lines)
