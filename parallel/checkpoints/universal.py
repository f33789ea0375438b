"""Resume on M ranks from a checkpoint written by N: DeepSpeed's universal checkpointing, cached, plus the
fix-ups DeepSpeed's load leaves to the caller.

ZeRO shards are per rank, so a checkpoint written by N ranks cannot be loaded shard for shard by M.  DeepSpeed's
own converter (``deepspeed/checkpoint/ds_to_universal.py``) rewrites it as one file per parameter (fp32 weights,
Adam moments) that any world size can load with ``checkpoint.load_universal``.  We never reshard ourselves: we
run that converter once per checkpoint, keep its output in ``<tag>/universal/``, and load from there.

Two things DeepSpeed's universal load does not carry over, which the trainer restores after loading:

* per-group hyperparameters: the ZeRO-3 universal load copies parameter group 0's settings (weight decay,
  lr scale) onto every group (``load_hp_checkpoint_state_from_checkpoint_dir_stage3``), which would put weight
  decay on biases and norms and erase layer-wise lr decay;
* the data position: each rank's loader state belongs to the old world; the new one is derived from the step
  (see ``data_state_for_world``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from ..subprocesses import run_group
from .store import UNIVERSAL, write_atomic

CONVERTED = "CONVERTED"  # written last into <tag>/universal/: the cached conversion is whole
# the settings each group carries by construction (optim.param_groups); DeepSpeed's universal load overwrites them
GROUP_SETTINGS = ("weight_decay", "lr_scale", "betas", "eps")
# DeepSpeed's converter, its torch.load calls restricted to DeepSpeed's allow-list (checkpoints/trust.py)
CONVERTER = ["-m", "mawstron.parallel.checkpoints.trust", "deepspeed.checkpoint.ds_to_universal"]


def universal_dir(ckpt_dir: str, tag: str) -> str:
    return os.path.join(ckpt_dir, tag, UNIVERSAL)


def is_converted(ckpt_dir: str, tag: str) -> bool:
    return os.path.isfile(os.path.join(universal_dir(ckpt_dir, tag), CONVERTED))


def convert(ckpt_dir: str, tag: str, workers: int = 1, timeout_s: float | None = None) -> tuple[str, bool]:
    """``<tag>/universal`` from DeepSpeed's converter, run once (a subprocess in its own process group: its worker
    pools and memory end with it, and a timeout ends its workers too).  Returns (path, whether it was converted
    now rather than found cached).  ``timeout_s``: the trainer passes less than ``parallel.timeout_s``, so that the
    ranks waiting for the conversion hear why instead of timing out in their barrier."""
    out = universal_dir(ckpt_dir, tag)
    if is_converted(ckpt_dir, tag):
        return out, False
    tmp = out + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, *CONVERTER, "--input_folder", os.path.join(ckpt_dir, tag), "--output_folder", tmp,
           "--num_extract_workers", str(workers), "--num_merge_workers", str(workers)]
    try:
        proc = run_group(cmd, timeout_s, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except subprocess.TimeoutExpired:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"DeepSpeed's universal conversion of {os.path.join(ckpt_dir, tag)} did not finish within "
                           f"{timeout_s:.0f} s and was stopped with its workers; raise parallel.timeout_s "
                           f"(the conversion gets 90% of it)") from None
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"DeepSpeed's universal conversion of {os.path.join(ckpt_dir, tag)} failed "
                           f"(exit {proc.returncode}): {proc.stdout.strip().splitlines()[-1:]}")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    # the converter points <tag>/latest_universal at its output folder's name; keep it true after the rename
    write_atomic(os.path.join(ckpt_dir, tag, "latest_universal"), UNIVERSAL)
    write_atomic(os.path.join(out, CONVERTED), tag)
    return out, True


def group_settings(param_groups: list[dict]) -> list[dict]:
    return [{k: g[k] for k in GROUP_SETTINGS if k in g} for g in param_groups]


def restore_group_settings(param_groups: list[dict], expected: list[dict]) -> int:
    """Put each group's own settings back after a universal load; returns how many groups had been changed.
    Raises if the groups do not line up (a different model or optimizer grouping than the checkpoint's)."""
    if len(param_groups) != len(expected):
        raise RuntimeError(f"the optimizer has {len(param_groups)} parameter groups after loading and "
                           f"{len(expected)} were built; the checkpoint's model or optim settings differ from this run")
    changed = 0
    for group, settings in zip(param_groups, expected):
        if any(group.get(k) != v for k, v in settings.items()):
            changed += 1
            group.update(settings)
    return changed


def data_state_for_world(saved: dict, step: int, grad_accum: int) -> dict:
    """This rank's loader state after ``step`` optimizer steps of ``grad_accum`` micro-batches on the new world.

    Every loader splits the data by rank, so no state of the old ranks maps onto a new rank.  What carries over
    is the amount consumed: the global batch is the same, so after ``step`` steps each new rank has served
    ``step x grad_accum`` micro-batches, and the PyTorch shard loader, whose position indexes an epoch-wise
    permutation of the rank's samples, continues at the same epoch and the same fraction of it.  DALI's reader
    state is per shard split and is dropped: its stream restarts at the new split's beginning."""
    state = {k: v for k, v in saved.items() if k != "dali_checkpoint"}
    state["batches_served"] = step * grad_accum
    if saved.get("loader") == "dali":
        state["dali_checkpoint"] = None
    return state
