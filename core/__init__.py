"""Models (ViT family, MAE, WSP, CLIP), FLOP accounting, weight loading, and the data pipeline (``core/data``)
and offline evaluation (``core/eval``): single-device PyTorch.

``core`` never imports ``mawstron.parallel`` or DeepSpeed; ``parallel`` applies sharding and checkpointing to
these models.
"""

from .clip import CLIP, LitConfig, create_clip
from .contrastive import clip_loss
from .flops import forward_flops, forward_flops_breakdown, training_flops
from .mae import MAEConfig, MaskedAutoencoder, create_mae, encoder_state_dict, patchify, random_masking, unpatchify
from .pos_embed import resample_abs_pos_embed, sincos_2d
from .vit import PRESETS, SIZE_FIELDS, ViTConfig, VisionTransformer, count_parameters, size_overrides, vit_config
from .weights import (
    LoadReport,
    adapt_state_dict,
    check_fit,
    guess_preset,
    load_pretrained,
    normalize_state_dict,
    read_checkpoint,
    read_metadata,
    read_state_dict,
    register_folder_reader,
)
from .factory import create_vit, create_vit_from_checkpoint  # above the models, as timm's _factory
from .wsp import create_wsp, multi_hot, wsp_loss

__all__ = [
    "CLIP",
    "LitConfig",
    "clip_loss",
    "create_clip",
    "PRESETS",
    "SIZE_FIELDS",
    "size_overrides",
    "LoadReport",
    "adapt_state_dict",
    "check_fit",
    "MAEConfig",
    "MaskedAutoencoder",
    "ViTConfig",
    "VisionTransformer",
    "count_parameters",
    "create_mae",
    "create_vit_from_checkpoint",
    "create_vit",
    "create_wsp",
    "encoder_state_dict",
    "forward_flops",
    "forward_flops_breakdown",
    "guess_preset",
    "load_pretrained",
    "multi_hot",
    "normalize_state_dict",
    "patchify",
    "random_masking",
    "read_checkpoint",
    "read_metadata",
    "read_state_dict",
    "register_folder_reader",
    "resample_abs_pos_embed",
    "sincos_2d",
    "training_flops",
    "unpatchify",
    "vit_config",
    "wsp_loss",
]
