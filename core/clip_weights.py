"""MAWS-CLIP checkpoints: the release's key layout, its mapping onto ``core.clip.CLIP``, and model inference
from the shapes.

The release (facebookresearch/maws ``model_builder.py``) pairs a timm ViT (``vision_encoder.*``) with a torchtext
``RobertaModel`` (``text_encoder.encoder.transformer.*``, post-norm, fairseq XLM-R ids, 514 positions), plus
``vision_projection``, ``text_projection`` and ``logit_scale``.  Our text tower is ``transformers``'
``XLMRobertaModel``, the same network under other names:

====================================================  ==========================================================
release (torchtext)                                   ``transformers`` XLM-R
====================================================  ==========================================================
``token_embedding.weight``                            ``embeddings.word_embeddings.weight``
``positional_embedding.embedding.weight``             ``embeddings.position_embeddings.weight``
``embedding_layer_norm.{weight,bias}``                ``embeddings.LayerNorm.{weight,bias}``
``layers.N.attention.input_projection.{w,b}``         ``encoder.layer.N.attention.self.{query,key,value}.{w,b}``
                                                      (the fused q|k|v rows, split in three)
``layers.N.attention.output_projection``              ``encoder.layer.N.attention.output.dense``
``layers.N.attention_layer_norm``                     ``encoder.layer.N.attention.output.LayerNorm``
``layers.N.residual_mlp.mlp.0`` / ``mlp.3``           ``encoder.layer.N.intermediate.dense`` / ``output.dense``
``layers.N.final_layer_norm``                         ``encoder.layer.N.output.LayerNorm``
(none)                                                ``embeddings.token_type_embeddings.weight`` (zeros)
``logit_scale`` shape ``[]``                          ``logit_scale`` shape ``[1]`` (ZeRO-3 partitions no 0-dim)
====================================================  ==========================================================

Exporting folds the single token-type row into the word embeddings (both are added to every token), so the
exported network computes the same features.
"""

from __future__ import annotations

import re

import torch

from .clip import LitConfig
from .vit import PRESETS
from .weights import read_file, unwrap_state_dict

RELEASE_TEXT = "text_encoder.encoder.transformer."
OURS_TEXT = "text_encoder."
_LAYER_RENAMES = {  # release suffix after layers.N. -> transformers suffix after encoder.layer.N.
    "attention.output_projection": "attention.output.dense",
    "attention_layer_norm": "attention.output.LayerNorm",
    "residual_mlp.mlp.0": "intermediate.dense",
    "residual_mlp.mlp.3": "output.dense",
    "final_layer_norm": "output.LayerNorm",
}
_EMBED_RENAMES = {
    "token_embedding": "embeddings.word_embeddings",
    "positional_embedding.embedding": "embeddings.position_embeddings",
    "embedding_layer_norm": "embeddings.LayerNorm",
}
_LAYER = re.compile(r"^layers\.(\d+)\.(.+)\.(weight|bias)$")
_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")


def is_release_layout(state: dict) -> bool:
    return any(k.startswith(RELEASE_TEXT) for k in state)


def release_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A MAWS-CLIP release state dict with its text tower renamed to ``transformers``' XLM-R keys."""
    out = {}
    for key, value in state.items():
        if not key.startswith(RELEASE_TEXT):
            out[key] = value.reshape(1) if key == "logit_scale" else value
            continue
        name = key[len(RELEASE_TEXT):]
        match = _LAYER.match(name)
        if match:
            layer, module, kind = match.groups()
            prefix = f"{OURS_TEXT}encoder.layer.{layer}."
            if module == "attention.input_projection":
                for part, chunk in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                    out[f"{prefix}attention.self.{part}.{kind}"] = chunk.clone()
            elif module in _LAYER_RENAMES:
                out[f"{prefix}{_LAYER_RENAMES[module]}.{kind}"] = value
            else:
                raise KeyError(f"unknown key {key!r} in a MAWS-CLIP text encoder")
            continue
        module, _, kind = name.rpartition(".")
        if module not in _EMBED_RENAMES:
            raise KeyError(f"unknown key {key!r} in a MAWS-CLIP text encoder")
        out[f"{OURS_TEXT}{_EMBED_RENAMES[module]}.{kind}"] = value
        if module == "token_embedding":
            out[f"{OURS_TEXT}embeddings.token_type_embeddings.weight"] = torch.zeros(1, value.shape[1], dtype=value.dtype)
    return out


def ours_to_release(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse: ``core.clip.CLIP`` keys -> the release layout (token types folded into the words)."""
    out, qkv = {}, {}
    embed_back = {v: k for k, v in _EMBED_RENAMES.items()}
    layer_back = {v: k for k, v in _LAYER_RENAMES.items()}
    token_type = state.get(f"{OURS_TEXT}embeddings.token_type_embeddings.weight")
    for key, value in state.items():
        if not key.startswith(OURS_TEXT):
            out[key] = value.reshape(()) if key == "logit_scale" else value
            continue
        name = key[len(OURS_TEXT):]
        if name == "embeddings.token_type_embeddings.weight":
            continue
        match = _HF_LAYER.match(name)
        if match:
            layer, module, kind = match.groups()
            if module.startswith("attention.self."):
                qkv.setdefault((layer, kind), {})[module.rsplit(".", 1)[1]] = value
            else:
                out[f"{RELEASE_TEXT}layers.{layer}.{layer_back[module]}.{kind}"] = value
            continue
        module, _, kind = name.rpartition(".")
        if module == "embeddings.word_embeddings" and token_type is not None:
            value = value + token_type[0]
        out[f"{RELEASE_TEXT}{embed_back[module]}.{kind}"] = value
    for (layer, kind), parts in qkv.items():
        out[f"{RELEASE_TEXT}layers.{layer}.attention.input_projection.{kind}"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]], dim=0)
    return out


def read_clip_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A CLIP checkpoint file (``.safetensors`` or a torch file, optionally under ``model``/``state_dict``) as
    a flat dict in our key layout (a release layout is converted)."""
    state = unwrap_state_dict(read_file(path, what="CLIP checkpoint"))
    state = {k.removeprefix("module."): v for k, v in state.items() if torch.is_tensor(v)}
    if not any(k.startswith("vision_encoder.") for k in state) or "text_projection" not in state:
        raise ValueError(f"{path!r} is not a CLIP checkpoint: it lacks vision_encoder.* / text_projection keys "
                         f"(for an image encoder alone use load_pretrained)")
    return release_to_ours(state) if is_release_layout(state) else state


def infer_clip_config(state: dict[str, torch.Tensor]):
    """``(ViT preset name, ViT overrides, LitConfig)`` that fit a CLIP state dict in our layout, from shapes.

    The ViT preset is the one whose width, depth and patch size match (heads are not visible in shapes); the
    text tower's heads follow XLM-R's 64-wide heads."""
    width = state["vision_encoder.patch_embed.proj.weight"].shape[0]
    patch = state["vision_encoder.patch_embed.proj.weight"].shape[-1]
    depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("vision_encoder.blocks."))
    tokens = state["vision_encoder.pos_embed"].shape[1] - 1
    img_size = int(round(tokens**0.5)) * patch
    candidates = [n for n, p in PRESETS.items()
                  if (p["embed_dim"], p["depth"], p["patch_size"]) == (width, depth, patch)]
    if not candidates:
        raise ValueError(f"no ViT preset has width {width}, depth {depth}, patch {patch}: add one to core/vit.py")
    text_words = state[f"{OURS_TEXT}embeddings.word_embeddings.weight"]
    text_depth = 1 + max(int(k.split(".")[3]) for k in state if k.startswith(f"{OURS_TEXT}encoder.layer."))
    text_width = text_words.shape[1]
    positions = state[f"{OURS_TEXT}embeddings.position_embeddings.weight"].shape[0]
    lit = LitConfig(vocab_size=text_words.shape[0], text_width=text_width, text_depth=text_depth,
                    text_heads=max(1, text_width // 64),
                    text_mlp_dim=state[f"{OURS_TEXT}encoder.layer.0.intermediate.dense.weight"].shape[0],
                    context_length=min(100, positions - 4), embed_dim=state["text_projection"].shape[1])
    return candidates[0], {"img_size": img_size}, lit
