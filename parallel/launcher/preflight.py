"""Checks made before any rank starts, so that a run never destroys another one and never dies late.

``mawstron train`` calls them in one process before it starts the launcher; ``launch`` calls them again on every
rank (``deepspeed recipes/x.py`` bypasses ``mawstron train``).  Both are file-system checks only: they run before
distributed initialisation, and no rank writes a checkpoint before every rank has passed them.
"""

from __future__ import annotations

import os
import shutil

from mawstron.core.text import TOKENIZER_FILE

from ..checkpoints import store as ckpt
from ..checkpoints.store import find_checkpoint_dir
from ..config import RunConfig


class PreflightError(ValueError):
    """The run would overwrite, or depend on, something it should not; the message names the input and the fix."""


def existing_checkpoints(checkpoint_dir: str) -> list[str]:
    """What in ``checkpoint_dir`` belongs to an earlier run: ``latest`` and every ``step_*`` folder."""
    if not os.path.isdir(checkpoint_dir):
        return []
    return sorted(n for n in os.listdir(checkpoint_dir) if n == ckpt.LATEST or ckpt._TAG.match(n))


def check_run_folder(cfg: RunConfig, overwrite: bool) -> None:
    """Refuse to start a fresh run over the checkpoints of an earlier one, unless told to resume or overwrite;
    refuse to resume from nothing."""
    found = existing_checkpoints(cfg.checkpoint_dir)
    if cfg.checkpoint.resume:
        if overwrite:
            raise PreflightError("--resume and --overwrite contradict each other: give one of them")
        if not ckpt.is_zero_checkpoint_dir(cfg.checkpoint_dir):
            raise PreflightError(f"--resume: {cfg.checkpoint_dir} holds no complete checkpoint to continue from; "
                                 f"drop --resume to start the run afresh")
        return
    if found and not overwrite:
        raise PreflightError(
            f"{cfg.checkpoint_dir} already holds checkpoints of an earlier run ({', '.join(found[:3])}); "
            f"continue it with --resume, replace it with --overwrite, or choose another folder with "
            f"--set output_dir=runs/NEW"
        )


def clear_old_checkpoints(cfg: RunConfig) -> list[str]:
    """With ``--overwrite``: remove the earlier run's ``latest``, ``step_*`` folders and LiT tokenizer (nothing
    else), so that the new run's checkpoints never mix with them and LiT trains its own tokenizer instead of
    silently reusing the old one.  Returns what was removed."""
    removed = existing_checkpoints(cfg.checkpoint_dir)
    if os.path.isfile(os.path.join(cfg.checkpoint_dir, TOKENIZER_FILE)):
        removed.append(TOKENIZER_FILE)
    for name in removed:
        path = os.path.join(cfg.checkpoint_dir, name)
        if os.path.islink(path):  # never delete through a link into somebody else's folder
            os.remove(path)
        elif os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.remove(path)
    return removed


def check_init_from(cfg: RunConfig) -> None:
    """``checkpoint.init_from`` must name a checkpoint folder, a run folder or a weights file.  On ``--resume`` the
    weights come from the run's own checkpoint, so ``init_from`` is neither read nor checked."""
    source = cfg.checkpoint.init_from
    if not source or cfg.checkpoint.resume:
        return
    if os.path.isfile(source) or find_checkpoint_dir(source):
        return
    what = "holds no complete checkpoint" if os.path.isdir(source) else "does not exist"
    raise PreflightError(
        f"checkpoint.init_from={source!r} {what}: train that run first (`make demo` writes runs/demo/mae/checkpoints "
        f"and runs/demo/wsp/checkpoints), or --set checkpoint.init_from=PATH (a checkpoints/ folder, a run folder "
        f"or a .safetensors file; empty for random initialisation)"
    )


def preflight(cfg: RunConfig, overwrite: bool = False) -> None:
    """Every check above; raises PreflightError with a one-line message."""
    check_run_folder(cfg, overwrite)
    check_init_from(cfg)


def prepare_run_folder(cfg: RunConfig, overwrite: bool, clear: bool = True) -> list[str]:
    """``preflight``, then with ``--overwrite`` remove the earlier run's checkpoints (when ``clear``: one process
    of the run does it); returns what was removed.  ``mawstron train`` and every rank of ``launch`` call it."""
    preflight(cfg, overwrite=overwrite)
    return clear_old_checkpoints(cfg) if overwrite and clear else []


def data_notice(cfg: RunConfig) -> str | None:
    """One line when the run trains on random tensors (``data.source=synthetic``, the tiny MAE and WSP recipes' default)."""
    if cfg.data.source != "synthetic":
        return None
    return ("[mawstron] data.source=synthetic: training on random tensors (a smoke run); for images give "
            "--set data.source=shards --set 'data.shards=DIR/train-*.tar'" + cfg.stage.synthetic_data_hint())


def warmup_notice(cfg: RunConfig) -> str | None:
    """One line when the lr warmup does not end before the run does (the lr never reaches its peak): a paper
    recipe shortened with ``--set train.steps=...``, or a benchmark of a few steps."""
    warmup, steps = cfg.optim.warmup_steps, cfg.train.steps
    if warmup < steps:
        return None
    return (f"[mawstron] warning: optim.warmup_steps={warmup} is not shorter than train.steps={steps}: the lr rises "
            f"for the whole run and never reaches its peak; --set optim.warmup_steps={max(0, steps // 20)} for a "
            f"short run")
