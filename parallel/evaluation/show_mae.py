"""An MAE with its decoder, rebuilt from what training writes (or from MAE's released visualisation weights),
for ``mawstron show-mae``."""

from __future__ import annotations

import dataclasses
import json
import os

import torch

from mawstron.core import MAEConfig, create_mae, load_pretrained
from mawstron.core.weights import read_state_dict

from ..checkpoints.store import is_zero_checkpoint_dir, read_run_config, read_zero_checkpoint
from ..config import ModelConfig


def _mae_config(values: dict) -> MAEConfig:
    fields = {f.name for f in dataclasses.fields(MAEConfig)}
    return MAEConfig(**{k: v for k, v in values.items() if k in fields})


def _safetensors_metadata(path: str) -> dict:
    if not path.endswith(".safetensors"):
        return {}
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return f.metadata() or {}


def load_mae(checkpoint: str, tag: str | None = None, preset: str = "", norm_pix_loss: bool | None = None):
    """A ``MaskedAutoencoder`` in eval mode with every weight (decoder included) from ``checkpoint``: an MAE
    run's checkpoints/ folder (model and MAE settings from its run config), or a weights file with the decoder
    (``preset`` names the encoder; MAE's decoder defaults)."""
    if is_zero_checkpoint_dir(checkpoint):
        run = read_run_config(checkpoint, tag)
        if run["train"]["stage"] != "mae":  # this tool is MAE's own: the decoder draws the reconstruction
            raise ValueError(f"{checkpoint} holds a {run['train']['stage']} run; show-mae needs an MAE run's "
                             f"checkpoints (the decoder draws the reconstruction)")
        model_cfg = ModelConfig(**run["model"])
        mae_cfg = _mae_config(run["mae"])
        state = read_zero_checkpoint(checkpoint, tag)
    elif os.path.isfile(checkpoint):
        meta = _safetensors_metadata(checkpoint)
        if "model" in meta and not preset:  # written by this project: the settings travel with the weights
            model_cfg = ModelConfig(**json.loads(meta["model"]))
            mae_cfg = _mae_config(json.loads(meta.get("mae", "{}")))
        elif preset:
            model_cfg, mae_cfg = ModelConfig(preset=preset), MAEConfig()
        else:
            raise ValueError(f"{checkpoint!r} is a weights file: pass --preset (e.g. vit_l16) to say which encoder")
        state = read_state_dict(checkpoint)
        if not any(k.startswith("decoder_") for k in state):
            raise ValueError(f"{checkpoint!r} has no decoder weights (an encoder-only release or a consolidated "
                             f"encoder); use an MAE run's checkpoints/ folder or `mawstron weights get "
                             f"mae_visualize_vit_l16`")
    else:
        raise FileNotFoundError(f"checkpoint {checkpoint!r} does not exist")
    if norm_pix_loss is not None:
        mae_cfg = dataclasses.replace(mae_cfg, norm_pix_loss=norm_pix_loss)
    model = create_mae(model_cfg.preset, mae=mae_cfg, **model_cfg.vit_overrides())
    load_pretrained(model, {k: v.float() for k, v in state.items() if torch.is_tensor(v)})
    return model.eval()
