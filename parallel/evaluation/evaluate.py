"""Transfer evaluation of a training checkpoint: rebuild its encoder, extract frozen features, run the protocols.

Accepts what training writes: a ZeRO-3 checkpoint directory (merged on the CPU) or a consolidated
``.safetensors`` file (its metadata names the preset).  Evaluation data are labelled shards, e.g. the
``eval-train-*.tar`` / ``eval-test-*.tar`` splits that ``mawstron data synth`` writes.
"""

from __future__ import annotations

import json
import os

import torch

from mawstron.core import create_vit, load_pretrained
from mawstron.core.data import DataConfig, build_eval_loader
from mawstron.core.data.image_folder import align_classes
from mawstron.core.eval import extract_features, few_shot, linear_probe

from ..checkpoints.store import (complete_tags, find_checkpoint_dir, is_zero_checkpoint_dir, read_run_config,
                                 read_zero_checkpoint, tag_for_step)
from ..config import ModelConfig
from ..engine.build import read_checkpoint_weights, split_encoder


def model_config_of(checkpoint: str, tag: str | None = None) -> ModelConfig:
    """The ``model`` section the checkpoint was trained with."""
    ckpt_dir = find_checkpoint_dir(checkpoint)  # a checkpoints/ folder or the run folder holding one
    if ckpt_dir:
        return ModelConfig(**read_run_config(ckpt_dir, tag)["model"])
    if checkpoint.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(checkpoint, "pt") as f:
            meta = f.metadata() or {}
        if "model" in meta:
            return ModelConfig(**json.loads(meta["model"]))
    raise ValueError(
        f"cannot tell which model {checkpoint!r} holds: pass a run's checkpoints/ folder or a file written by "
        f"`mawstron consolidate` (its metadata names the preset)"
    )


def checkpoint_tag(checkpoint: str, tag: str | None) -> str | None:
    """``tag`` checked against the checkpoint folder: a tag name (``step_00000400``) or a step number (``400``);
    ValueError listing the complete tags when it is not one of them."""
    if not tag:
        return None
    if not is_zero_checkpoint_dir(checkpoint):
        raise ValueError(f"--tag picks a step of a run's checkpoints/ folder; {checkpoint!r} is not one")
    if tag.isdigit():
        tag = tag_for_step(int(tag))
    done = complete_tags(checkpoint)
    if tag not in done:
        raise ValueError(f"--tag {tag}: no complete checkpoint of that name in {checkpoint}; complete tags: "
                         f"{', '.join(done) or 'none'}")
    return tag


def load_encoder_from_checkpoint(checkpoint: str, tag: str | None = None) -> torch.nn.Module:
    """The checkpoint's encoder as a plain ``core`` ViT (no head), weights loaded strictly, in eval mode.
    ``tag`` picks a step of a ZeRO checkpoint folder (``step_00000400``; default: the one ``latest`` names)."""
    if not os.path.exists(checkpoint):
        raise FileNotFoundError(f"checkpoint {checkpoint!r} does not exist")
    checkpoint = find_checkpoint_dir(checkpoint) or checkpoint  # a run folder stands for its checkpoints/
    tag = checkpoint_tag(checkpoint, tag)
    model_cfg = model_config_of(checkpoint, tag)
    model = create_vit(model_cfg.preset, **model_cfg.vit_overrides())
    weights = read_zero_checkpoint(checkpoint, tag) if tag else read_checkpoint_weights(checkpoint)
    encoder, _ = split_encoder(weights)
    load_pretrained(model, encoder)
    return model.eval()


def evaluate(checkpoint: str, train_shards: str, test_shards: str, *, shots=(1, 5, 10), draws: int = 5,
             pool: str = "token", loader: str = "dali", batch_size: int = 128, seed: int = 0,
             tag: str | None = None) -> dict:
    """Linear probe and k-shot accuracy of ``checkpoint``'s frozen features on labelled shards (or ImageFolder
    directories)."""
    model = load_encoder_from_checkpoint(checkpoint, tag)
    data = DataConfig(source="shards", loader=loader)
    img = model.config.img_size
    train_loader = build_eval_loader(data, img_size=img, batch_size=batch_size, shards=train_shards)
    test_loader = build_eval_loader(data, img_size=img, batch_size=batch_size, shards=test_shards)
    align_classes(train_loader, test_loader)  # ImageFolders: the test split numbered by train's class folders
    train_x, train_y = extract_features(model, train_loader, pool=pool)
    test_x, test_y = extract_features(model, test_loader, pool=pool)
    probe = linear_probe(train_x, train_y, test_x, test_y, seed=seed)
    result = {
        "checkpoint": checkpoint,
        "tag": tag,
        "pool": pool,
        "train_images": len(train_y),
        "test_images": len(test_y),
        "num_classes": int(max(train_y.max(), test_y.max())) + 1,
        "linear_probe_accuracy": probe.accuracy,
        "linear_probe_l2": probe.l2,
    }
    for k in shots:
        fs = few_shot(train_x, train_y, test_x, test_y, shots=k, draws=draws, seed=seed)
        result[f"{k}_shot_accuracy"] = fs.mean_accuracy
        result[f"{k}_shot_std"] = fs.std_accuracy
    return result
