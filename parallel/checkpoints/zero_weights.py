"""ZeRO checkpoint folders as weights: what ``mawstron.core.load_pretrained`` reads once ``mawstron.parallel`` is
imported, and the metadata (preset, classes, vocabulary) that ``mawstron consolidate`` writes into its file.

The merge of every rank's shards is DeepSpeed's own (``zero_to_fp32``), which is why this lives here and not in
``core``: ``core`` only holds the hook (``register_folder_reader``).
"""

from __future__ import annotations

import json

import torch

from mawstron.core import register_folder_reader

from ..console import stdout_to_stderr
from ..stages import STAGES
from .store import find_checkpoint_dir, read_run_config, read_zero_checkpoint


def _label_names(run: dict) -> list[str] | None:
    """The names of the head's outputs: the WSP vocabulary's tags, or the classes of the labelled shards'
    ``manifest.json`` (fine-tuning); None when the files are gone."""
    stage = run.get("train", {}).get("stage")
    return STAGES[stage].label_names(run) if stage in STAGES else None


def head_metadata(state: dict[str, torch.Tensor], run: dict) -> dict[str, str]:
    """Header metadata for a head in ``state``: ``num_classes`` and, when the run's files are still there, the
    ``vocab`` (JSON list) naming its outputs.  Empty without a head."""
    head = state.get("head.weight")
    if head is None:
        return {}
    meta = {"num_classes": str(head.shape[0])}
    names = _label_names(run)
    if names and len(names) == head.shape[0]:
        meta["vocab"] = json.dumps(names)
    return meta


def read_zero_folder(path: str) -> tuple[dict[str, torch.Tensor], dict] | None:
    """(full state dict, metadata) of a checkpoints/ folder or of the run folder holding one; None otherwise."""
    ckpt_dir = find_checkpoint_dir(path)
    if ckpt_dir is None:
        return None
    with stdout_to_stderr():  # DeepSpeed's merge prints progress
        state = read_zero_checkpoint(ckpt_dir)
    run = read_run_config(ckpt_dir)
    meta = {"format": "zero", "preset": run["model"]["preset"], "model": json.dumps(run["model"]),
            "stage": run["train"]["stage"], **head_metadata(state, run)}
    return state, meta


register_folder_reader(read_zero_folder)
