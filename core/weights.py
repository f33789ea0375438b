"""Loading pretrained weights into ``core`` models from the layouts people publish.

Accepted: a timm ViT state dict (what the MAWS release is), the MAE repository's ``{"model": ...}`` checkpoints
(encoder-only or with the decoder), MAWS-CLIP checkpoints (``vision_encoder.`` prefix), DeepSpeed/DDP
``module.`` prefixes, ``torch.compile``'s ``_orig_mod.``, and ``.safetensors`` files.  Position embeddings are
resampled when the image size differs (fine-tuning at 518 px from a 224 px checkpoint).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .mae import DECODER_KEY_PREFIXES
from .pos_embed import resample_abs_pos_embed

_WRAPPER_KEYS = ("model", "state_dict", "module", "model_state")
_PREFIXES = ("module.", "_orig_mod.", "vision_encoder.", "encoder.")
_POS_EMBED_KEYS = ("pos_embed", "decoder_pos_embed")


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # known extras removed on purpose (decoder, mismatched head)
    resampled: list[str] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)

    def __str__(self):
        parts = [f"{name}={getattr(self, name)}" for name in ("missing", "unexpected", "dropped", "resampled")]
        return "LoadReport(" + ", ".join(parts) + ")"


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a ``.safetensors``/``.pt``/``.pth`` file, wrappers and prefixes removed."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file {path!r} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        raw = load_file(path)
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    return normalize_state_dict(raw)


def normalize_state_dict(raw: dict) -> dict[str, torch.Tensor]:
    """Unwrap ``{"model": ...}``-style containers and strip training-wrapper prefixes."""
    sd = raw
    while isinstance(sd, dict) and not any(torch.is_tensor(v) for v in sd.values()):
        inner = next((sd[k] for k in _WRAPPER_KEYS if isinstance(sd.get(k), dict)), None)
        if inner is None:
            raise ValueError(f"no state dict found in checkpoint with top-level keys {sorted(sd)[:10]}")
        sd = inner
    if any(k.startswith("vision_encoder.") for k in sd) and any(k.startswith("text_encoder.") for k in sd):
        # a MAWS-CLIP checkpoint: its image tower (the text tower, projections and logit scale stay behind)
        sd = {k: v for k, v in sd.items() if k.startswith("vision_encoder.")}
    out = {}
    for key, value in sd.items():
        if not torch.is_tensor(value):
            continue
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def adapt_state_dict(state_dict: dict[str, torch.Tensor], target_shapes: dict[str, tuple]) -> tuple[dict, LoadReport]:
    """Fit ``state_dict`` to a model whose parameters and buffers have ``target_shapes`` (name -> shape): drop
    decoder keys an encoder lacks and a head of another size, resample position embeddings to the model's grid.

    Taking shapes rather than a model lets a sharded model (whose local tensors are empty stubs) pass its real
    shapes."""
    report = LoadReport()
    out = {}
    for key, value in state_dict.items():
        if key not in target_shapes:
            if key.startswith(DECODER_KEY_PREFIXES):
                report.dropped.append(key)
                continue
            out[key] = value  # left for the caller to report as unexpected
            continue
        shape = tuple(target_shapes[key])
        if key in _POS_EMBED_KEYS and tuple(value.shape) != shape:
            side = int(round((shape[1] - 1) ** 0.5))
            value = resample_abs_pos_embed(value, (side, side))
            report.resampled.append(key)
        elif key.startswith("head.") and tuple(value.shape) != shape:
            report.dropped.append(key)  # a new head over another label set: keep the model's fresh one
            continue
        out[key] = value
    return out, report


def check_fit(report: LoadReport, strict: bool) -> None:
    """Raise if ``report`` shows keys the model needs that the checkpoint lacks (a missing head is fine: a
    head on top of an encoder checkpoint, for fine-tuning or WSP from MAE, starts fresh), or extra keys."""
    fatal_missing = [k for k in report.missing if not k.startswith("head.")]
    if strict and (fatal_missing or report.unexpected):
        raise RuntimeError(
            f"checkpoint does not fit the model: missing {fatal_missing[:8]} unexpected {report.unexpected[:8]} "
            f"(is the preset right? pass strict=False to load what fits)"
        )


def load_pretrained(model: nn.Module, source, strict: bool = True) -> LoadReport:
    """Load ``source`` (a path or a state dict) into ``model``; returns what was missing, dropped, resampled.

    With ``strict`` any key the model has and the checkpoint lacks, or the reverse, is an error naming them,
    except a head the model adds on top of an encoder checkpoint (fine-tuning / WSP from MAE).
    """
    sd = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else normalize_state_dict(source)
    sd, report = adapt_state_dict(sd, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    result = model.load_state_dict(sd, strict=False)
    report.missing = list(result.missing_keys)
    report.unexpected = list(result.unexpected_keys)
    report.loaded = sorted(k for k in sd if k not in report.unexpected)
    check_fit(report, strict)
    return report
