"""Building models by name, as timm's ``_factory.py`` sits above its model files: ``create_vit`` (a preset,
optionally with released weights), ``create_vit_from_checkpoint`` (whatever a weights file describes).

``vit.py`` defines the model and never imports this module, the hub or the weight loaders; this module imports
them all.
"""

from __future__ import annotations

import os

from . import hub
from .vit import VisionTransformer, size_overrides, vit_config
from .weights import guess_preset, load_pretrained, load_with_metadata, read_checkpoint


def create_vit(name: str, *, pretrained: str = "", **overrides) -> VisionTransformer:
    """Build preset ``name`` (see ``PRESETS``) with any ``ViTConfig`` field overridden.

    Builds on whatever device is current, so ``with torch.device("meta"): create_vit("vit_6.5b14")`` is instant
    and allocates nothing.  ``pretrained="maws"`` (or ``"mae"``, ``"mae_in1k"``, ``"maws_ft_in1k"``) loads the
    released weights of that name, downloading them into the cache once (see core/hub.py).
    """
    if pretrained:
        return create_pretrained_vit(name, pretrained, **overrides)
    return VisionTransformer(vit_config(name, **overrides))


def create_pretrained_vit(preset: str, pretrained: str, **overrides):
    """``create_vit(preset, pretrained="maws")``: the release ``<pretrained>_<preset>`` (e.g. ``maws_vit_h14``,
    ``mae_vit_l16``, ``mae_in1k_vit_b16``; ``maws_ft_in1k`` gives ``maws_vit_h14_ft_in1k``) built and loaded."""
    name = f"maws_{preset}_ft_in1k" if pretrained == "maws_ft_in1k" else f"{pretrained}_{preset}"
    r = hub.release(name)
    model = create_vit(preset, **{**r.vit_overrides, **overrides})
    load_pretrained(model, hub.get_weights(name))
    return model


def create_vit_from_checkpoint(path: str | os.PathLike, num_classes: int | None = None, **overrides):
    """(model, report): the ViT that ``path`` holds, built from its metadata (preset, sizes, head) or, for a
    plain timm state dict, from the preset its shapes match; weights loaded strictly.  ``report.vocab`` names
    the head's outputs when the file records them."""
    sd, meta = read_checkpoint(path)
    model_meta = meta.get("model") if isinstance(meta.get("model"), dict) else {}
    preset = meta.get("preset") or guess_preset(sd)
    if not preset:
        raise ValueError(f"{os.fspath(path)!r} names no preset and its shapes match none: build the model with "
                         f"create_vit(...) and call load_pretrained")
    sizes = size_overrides(model_meta)
    head = sd.get("head.weight")
    if num_classes is None:
        num_classes = meta.get("num_classes") or (int(head.shape[0]) if head is not None else 0)
    model = create_vit(preset, **{**sizes, "num_classes": num_classes, **overrides})
    return model, load_with_metadata(model, sd, meta)
