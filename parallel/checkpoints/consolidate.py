"""Export: a run's ZeRO checkpoint -> one safetensors file (``mawstron consolidate``).

An MAE / WSP / fine-tuning run gives its encoder in timm key layout (the head kept on request); a LiT run gives
both towers in the MAWS-CLIP release layout, its tokenizer copied beside the file.  The header metadata (preset,
size overrides, stage, step, classes or vocabulary) is what ``mawstron.core.load_pretrained`` and ``mawstron
eval`` read back, so loading needs no guess.

Sits above ``store`` (the checkpoint folder) and ``zero_weights`` (the head's metadata); nothing below imports it.
"""

from __future__ import annotations

import json
import os
import shutil

from safetensors.torch import save_file

from mawstron.core import encoder_state_dict
from mawstron.core.clip_weights import ours_to_release
from mawstron.core.text import TOKENIZER_FILE

from ..stages import get_stage
from .store import newest_verified_tag, read_marker, read_run_config, read_zero_checkpoint, resolve_tag, verify_files
from .zero_weights import head_metadata


def tokenizer_beside(path: str) -> str:
    """Where ``mawstron consolidate`` puts a CLIP file's tokenizer: ``X.safetensors`` -> ``X.tokenizer.json``."""
    return os.path.splitext(path)[0] + "." + TOKENIZER_FILE


def consolidate(ckpt_dir: str, out_path: str, tag: str | None = None, keep_head: bool = False, say=print) -> dict:
    """Write the encoder of a ZeRO checkpoint as one safetensors file in timm key layout.

    Decoder and mask token (MAE) are dropped; the classification head (WSP) too unless ``keep_head``.  The
    file's metadata carries the preset and ViT overrides so ``mawstron eval`` can rebuild the model.  The
    checkpoint is verified against its manifest first; without ``tag``, a damaged newest checkpoint is reported
    through ``say`` and the newest one that verifies is used.  Returns a summary (tag, step, number of tensors
    and parameters)."""
    if tag is None:
        tag = newest_verified_tag(ckpt_dir, say=say)
    else:
        tag = resolve_tag(ckpt_dir, tag)
        problems = verify_files(ckpt_dir, tag)
        if problems:
            raise ValueError(f"checkpoint {tag} failed verification: {problems[0]}; pick another with --tag "
                             f"(`mawstron checkpoints verify {ckpt_dir}` lists them)")
    if get_stage(read_run_config(ckpt_dir, tag)["train"]["stage"]).text_tower:  # both towers, MAWS-CLIP layout
        return consolidate_clip(ckpt_dir, out_path, tag)
    state = encoder_state_dict(read_zero_checkpoint(ckpt_dir, tag))
    if not keep_head:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    run = read_run_config(ckpt_dir, tag)
    step = read_marker(ckpt_dir, tag)["step"]
    metadata = {
        "format": "timm",
        "preset": run["model"]["preset"],
        "model": json.dumps(run["model"]),
        "stage": run["train"]["stage"],
        "step": str(step),
        "source": os.path.abspath(os.path.join(ckpt_dir, tag)),
    }
    metadata.update(head_metadata(state, run))  # num_classes and the vocabulary, so loading needs no guess
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, out_path, metadata=metadata)
    return {"tag": tag, "step": step, "tensors": len(state), "params": sum(v.numel() for v in state.values())}


def consolidate_clip(ckpt_dir: str, out_path: str, tag: str | None = None) -> dict:
    """A LiT run's ZeRO-3 checkpoint -> one safetensors file in the MAWS-CLIP release layout
    (``vision_encoder.*`` timm keys, ``text_encoder.encoder.transformer.*`` torchtext keys, projections,
    ``logit_scale``), with the run's tokenizer copied beside it as ``NAME.tokenizer.json``."""
    tag = resolve_tag(ckpt_dir, tag)
    run = read_run_config(ckpt_dir, tag)
    state = ours_to_release(read_zero_checkpoint(ckpt_dir, tag))
    step = read_marker(ckpt_dir, tag)["step"]
    metadata = {"format": "maws_clip", "preset": run["model"]["preset"], "model": json.dumps(run["model"]),
                "lit": json.dumps(run["lit"]), "stage": "lit", "step": str(step),
                "source": os.path.abspath(os.path.join(ckpt_dir, tag))}
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, out_path, metadata=metadata)
    tokenizer = os.path.join(ckpt_dir, TOKENIZER_FILE)
    if os.path.isfile(tokenizer):
        shutil.copyfile(tokenizer, tokenizer_beside(out_path))
    return {"tag": tag, "step": step, "tensors": len(state), "params": sum(v.numel() for v in state.values()),
            "tokenizer": tokenizer_beside(out_path) if os.path.isfile(tokenizer) else None}
