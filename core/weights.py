"""Loading pretrained weights into ``core`` models from the layouts people publish.

Accepted: a timm ViT state dict (what the MAWS release is), the MAE repository's ``{"model": ...}`` checkpoints
(encoder-only or with the decoder), MAWS-CLIP checkpoints (``vision_encoder.`` prefix), DeepSpeed/DDP
``module.`` prefixes, ``torch.compile``'s ``_orig_mod.``, and ``.safetensors`` files.  Position embeddings are
resampled when the image size differs (fine-tuning at 518 px from a 224 px checkpoint).

What the project itself writes loads too: a file from ``mawstron consolidate`` carries the preset, the number of
classes and the hashtag vocabulary in its safetensors header (``read_metadata``), so ``create_vit_from_checkpoint``
needs nothing else; a ZeRO checkpoint folder (or the run folder holding it) needs DeepSpeed to merge, so its reader
lives in ``mawstron.parallel`` and registers itself here on import (``register_folder_reader``): ``core`` never
imports DeepSpeed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .mae import DECODER_KEY_PREFIXES
from .pos_embed import resample_abs_pos_embed
from .vit import PRESETS, vit_config

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
    metadata: dict = field(default_factory=dict)  # what the file says about itself (preset, stage, ...)
    num_classes: int | None = None  # of the checkpoint's head, if it has one
    vocab: list[str] | None = None  # the hashtag (WSP) or class (fine-tuning) names its head outputs

    def __str__(self):
        parts = [f"{name}={getattr(self, name)}" for name in ("missing", "unexpected", "dropped", "resampled")]
        return "LoadReport(" + ", ".join(parts) + ")"


# a folder reader takes a path and returns (state dict, metadata) if it recognises the folder, else None
_FOLDER_READERS: list[Callable] = []


def register_folder_reader(reader: Callable) -> None:
    """Let ``load_pretrained`` read folders (``mawstron.parallel`` registers the ZeRO checkpoint reader)."""
    if reader not in _FOLDER_READERS:
        _FOLDER_READERS.append(reader)


def read_metadata(path: str | os.PathLike) -> dict:
    """A safetensors file's header metadata, with ``num_classes`` as an int and ``model``/``vocab`` decoded from
    JSON; ``{}`` for other files."""
    path = os.fspath(path)
    if not path.endswith(".safetensors") or not os.path.isfile(path):
        return {}
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = dict(f.metadata() or {})
    return decode_metadata(meta)


def decode_metadata(meta: dict) -> dict:
    """String-valued header metadata -> Python values (the header can only hold strings)."""
    out = dict(meta)
    for key in ("model", "vocab"):
        if isinstance(out.get(key), str):
            try:
                out[key] = json.loads(out[key])
            except ValueError:
                pass
    if str(out.get("num_classes", "")).isdigit():
        out["num_classes"] = int(out["num_classes"])
    return out


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, metadata) of a weights file, or of a folder a registered reader recognises."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for reader in _FOLDER_READERS:
            found = reader(path)
            if found is not None:
                state, meta = found
                return normalize_state_dict(state), decode_metadata(meta)
        how = ("it holds no checkpoint ('latest' or a complete step_* folder)" if _FOLDER_READERS else
               "reading a ZeRO checkpoint folder needs DeepSpeed: `import mawstron.parallel` first")
        raise FileNotFoundError(f"{path!r} is a folder and {how}; or give a weights file, e.g. from "
                                f"`mawstron consolidate {path} --out FILE.safetensors`")
    return read_state_dict(path), read_metadata(path)


def read_file(path: str | os.PathLike, what: str = "checkpoint file") -> dict:
    """The raw contents of a ``.safetensors``/``.pt``/``.pth`` file (CPU tensors; torch files with
    ``weights_only``); FileNotFoundError naming ``what`` when there is no such file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a ``.safetensors``/``.pt``/``.pth`` file, wrappers and prefixes removed."""
    return normalize_state_dict(read_file(path))


def unwrap_state_dict(raw: dict) -> dict:
    """The state dict inside ``{"model": ...}``-style containers (``raw`` itself when it holds tensors)."""
    sd = raw
    while isinstance(sd, dict) and not any(torch.is_tensor(v) for v in sd.values()):
        inner = next((sd[k] for k in _WRAPPER_KEYS if isinstance(sd.get(k), dict)), None)
        if inner is None:
            raise ValueError(f"no state dict found in checkpoint with top-level keys {sorted(sd)[:10]}")
        sd = inner
    return sd


def normalize_state_dict(raw: dict) -> dict[str, torch.Tensor]:
    """Unwrap ``{"model": ...}``-style containers and strip training-wrapper prefixes."""
    sd = unwrap_state_dict(raw)
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
            if key.startswith(DECODER_KEY_PREFIXES) or (key.startswith("head.") and "head.weight" not in target_shapes):
                report.dropped.append(key)  # an MAE decoder, or a head the (encoder-only) model does not have
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
    if isinstance(source, (str, os.PathLike)):
        sd, meta = read_checkpoint(source)
    else:
        sd, meta = normalize_state_dict(source), {}
    head = sd.get("head.weight")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    sd, report = adapt_state_dict(sd, shapes)
    report.metadata = meta
    report.num_classes = meta.get("num_classes") or (int(head.shape[0]) if head is not None else None)
    report.vocab = meta.get("vocab")
    wrong = [k for k, v in sd.items() if k in shapes and tuple(v.shape) != shapes[k]]
    if wrong:
        k = wrong[0]
        raise RuntimeError(f"checkpoint does not fit the model: {k} is {list(sd[k].shape)} in the checkpoint and "
                           f"{list(shapes[k])} in the model ({len(wrong)} tensors differ){_preset_hint(sd, meta, model)}")
    result = model.load_state_dict(sd, strict=False)
    report.missing = list(result.missing_keys)
    report.unexpected = list(result.unexpected_keys)
    report.loaded = sorted(k for k in sd if k not in report.unexpected)
    try:
        check_fit(report, strict)
    except RuntimeError as e:
        raise RuntimeError(f"{e}{_preset_hint(sd, meta, model)}") from None
    return report


def guess_preset(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The preset whose width, depth and patch size match a timm-layout encoder state dict, if any."""
    proj = state_dict.get("patch_embed.proj.weight")
    if proj is None or proj.dim() != 4:
        return None
    blocks = {int(k.split(".")[1]) for k in state_dict if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    width, patch, depth = proj.shape[0], proj.shape[-1], (max(blocks) + 1 if blocks else 0)
    for name in PRESETS:
        c = vit_config(name)
        if (c.embed_dim, c.patch_size, c.depth) == (width, patch, depth):
            return name
    return None


def _preset_hint(state_dict: dict, meta: dict, model: nn.Module) -> str:
    name = meta.get("preset") or guess_preset(state_dict)
    config = getattr(model, "config", None)
    if name and config is not None:
        preset = vit_config(name)
        if (preset.embed_dim, preset.depth, preset.patch_size) == (config.embed_dim, config.depth, config.patch_size):
            return ""  # the preset is right; the keys themselves differ
    if name:
        return f"; the checkpoint holds preset {name!r}: build the model with create_vit({name!r}) (or use " \
               f"create_vit_from_checkpoint)"
    return "; no preset has its shapes: build the model with the checkpoint's own sizes"


def load_with_metadata(model: nn.Module, sd: dict, meta: dict) -> LoadReport:
    report = load_pretrained(model, sd)
    report.metadata = meta
    report.num_classes = meta.get("num_classes") or report.num_classes
    report.vocab = meta.get("vocab")
    return report
