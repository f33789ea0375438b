"""Training checkpoints: crash-safe saves, resume lookup, and offline consolidation of ZeRO-3 shards.

Layout of ``<checkpoint_dir>``::

    latest                      -> name of the newest *complete* checkpoint (replaced atomically)
    step_00000200/
        zero_pp_rank_*_model_states.pt, bf16_zero_pp_rank_*_optim_states.pt   (DeepSpeed, per rank;
                                  each rank's trainer state, data position and RNG ride in its model-states file)
        run_config.json           the RunConfig that produced it
        COMPLETE                  written by rank 0 after every rank finished writing

A crash during a save leaves a directory without ``COMPLETE`` and ``latest`` still naming the previous one.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time

import numpy as np
import torch

LATEST = "latest"
COMPLETE = "COMPLETE"
RUN_CONFIG = "run_config.json"
_TAG = re.compile(r"^step_(\d{8})$")


def tag_for_step(step: int) -> str:
    return f"step_{step:08d}"


def is_complete(ckpt_dir: str, tag: str) -> bool:
    return os.path.isfile(os.path.join(ckpt_dir, tag, COMPLETE))


def complete_tags(ckpt_dir: str) -> list[str]:
    """Complete checkpoint tags in ``ckpt_dir``, oldest first."""
    if not os.path.isdir(ckpt_dir):
        return []
    tags = [t for t in os.listdir(ckpt_dir) if _TAG.match(t) and is_complete(ckpt_dir, t)]
    return sorted(tags)


def write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def finalize(ckpt_dir: str, tag: str, step: int, run_config: dict, keep_last: int, world_size: int) -> None:
    """Rank 0, after a barrier that follows every rank's save: mark ``tag`` complete, point ``latest`` at it,
    prune the oldest complete checkpoints beyond ``keep_last``."""
    with open(os.path.join(ckpt_dir, tag, RUN_CONFIG), "w") as f:
        json.dump(run_config, f, indent=1)
    marker = {"step": step, "world_size": world_size, "time": time.time()}
    write_atomic(os.path.join(ckpt_dir, tag, COMPLETE), json.dumps(marker))
    write_atomic(os.path.join(ckpt_dir, LATEST), tag)
    for old in complete_tags(ckpt_dir)[:-keep_last]:
        if old != tag:
            shutil.rmtree(os.path.join(ckpt_dir, old), ignore_errors=True)


def resolve_tag(ckpt_dir: str, tag: str | None = None) -> str:
    """The checkpoint to load: ``tag`` if given, else the one ``latest`` names; it must be complete.

    If ``latest`` names an incomplete checkpoint (written by something other than this trainer), fall back to
    the newest complete one rather than load a torn save."""
    if tag is None:
        latest = os.path.join(ckpt_dir, LATEST)
        if not os.path.isfile(latest):
            raise FileNotFoundError(
                f"no checkpoint to resume from: {latest} does not exist (train without --resume first, or point "
                f"checkpoint.dir at the run's checkpoint folder)"
            )
        with open(latest) as f:
            tag = f.read().strip()
        if not is_complete(ckpt_dir, tag):
            done = complete_tags(ckpt_dir)
            if not done:
                raise FileNotFoundError(f"{ckpt_dir}: 'latest' names {tag!r}, which is incomplete, and no complete checkpoint exists")
            tag = done[-1]
    elif not is_complete(ckpt_dir, tag):
        raise FileNotFoundError(f"checkpoint {os.path.join(ckpt_dir, tag)} is missing or incomplete (no {COMPLETE} marker)")
    return tag


def read_marker(ckpt_dir: str, tag: str) -> dict:
    """What rank 0 recorded when it completed ``tag``: step, world size, time."""
    with open(os.path.join(ckpt_dir, tag, COMPLETE)) as f:
        return json.load(f)


def read_run_config(ckpt_dir: str, tag: str | None = None) -> dict:
    tag = resolve_tag(ckpt_dir, tag)
    with open(os.path.join(ckpt_dir, tag, RUN_CONFIG)) as f:
        return json.load(f)


# ----------------------------------------------------------------------------------------------- RNG
def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ----------------------------------------------------------------------------------------------- consolidation
def is_zero_checkpoint_dir(path: str) -> bool:
    return os.path.isdir(path) and (os.path.isfile(os.path.join(path, LATEST)) or bool(complete_tags(path)))


def read_zero_checkpoint(ckpt_dir: str, tag: str | None = None) -> dict[str, torch.Tensor]:
    """The full fp32 model state dict of a ZeRO checkpoint, merged from every rank's shards on the CPU (no GPUs,
    no process group)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag = resolve_tag(ckpt_dir, tag)
    return get_fp32_state_dict_from_zero_checkpoint(ckpt_dir, tag=tag, exclude_frozen_parameters=False)


def consolidate(ckpt_dir: str, out_path: str, tag: str | None = None, keep_head: bool = False) -> dict:
    """Write the encoder of a ZeRO checkpoint as one safetensors file in timm key layout.

    Decoder and mask token (MAE) are dropped; the classification head (WSP) too unless ``keep_head``.  The
    file's metadata carries the preset and ViT overrides so ``mawstron eval`` can rebuild the model.
    Returns a summary (tag, step, number of tensors and parameters)."""
    from safetensors.torch import save_file

    from mawstron.core import encoder_state_dict

    tag = resolve_tag(ckpt_dir, tag)
    if read_run_config(ckpt_dir, tag)["train"]["stage"] == "lit":  # both towers, in the MAWS-CLIP layout
        from .zero_shot import consolidate_clip

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
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, out_path, metadata=metadata)
    return {"tag": tag, "step": step, "tensors": len(state), "params": sum(v.numel() for v in state.values())}
