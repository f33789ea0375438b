"""FLOP accounting against PyTorch's own FLOP counter run on the real model."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mawstron.core import MAEConfig, create_mae, create_vit, forward_flops, forward_flops_breakdown, vit_config


def sdpa_flops(q_shape, k_shape, v_shape):
    b, h, n, d = q_shape
    m = k_shape[2]
    return 2 * b * h * n * m * d + 2 * b * h * n * m * v_shape[3]


def counted_flops(model, *inputs):
    """FLOPs of one forward as torch.utils.flop_counter sees them (it has no CPU-SDPA entry, so we add one)."""
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu

    def cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return sdpa_flops(query_shape, key_shape, value_shape)

    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping={op: cpu_sdpa}) as counter:
        model(*inputs)
    return counter.get_total_flops()


@pytest.mark.parametrize("name", ["vit_micro", "vit_tiny_h80"])
def test_wsp_and_feature_flops_match_counter(name):
    model = create_vit(name, num_classes=11).eval()
    x = torch.randn(2, 3, 32, 32)
    assert counted_flops(model, x) == 2 * forward_flops(model.config, "wsp")
    assert counted_flops(model.forward_features, x) == 2 * forward_flops(model.config, "features")


@pytest.mark.parametrize("ratio,decoder_depth", [(0.75, 1), (0.5, 2)])
def test_mae_flops_match_counter(ratio, decoder_depth):
    model = create_mae(
        "vit_micro", mask_ratio=ratio, decoder_embed_dim=32, decoder_depth=decoder_depth, decoder_num_heads=2
    )
    x = torch.randn(2, 3, 32, 32)
    assert counted_flops(model, x) == 2 * forward_flops(model.config, "mae", model.mae_config)


def test_paper_scale_numbers_are_sane():
    b16 = vit_config("vit_b16")
    # ViT-B/16 at 224: about 17.6 GFLOPs (multiply-adds) per image, i.e. ~35 GFLOPs
    assert 34e9 < forward_flops(b16, "features") < 36e9
    # MAE encoder on 25% of the tokens is roughly a quarter of the full encoder
    parts = forward_flops_breakdown(b16, "mae", MAEConfig())
    full = forward_flops_breakdown(b16, "features")
    assert 0.22 < parts["encoder_blocks"] / full["encoder_blocks"] < 0.27
    with pytest.raises(ValueError, match="stage"):
        forward_flops(b16, "linear_probe")


def test_attention_shapes_are_the_presets_sequences():
    """The (heads, head dim, sequence) shapes the kernel benchmarks and the sm_90 compile check use."""
    from mawstron.core.flops import attention_shapes

    assert attention_shapes() == (
        ("vit_b16", 12, 64, (50, 197)),  # 49 visible of 196 patches + cls; 224 px
        ("vit_l16", 16, 64, (50, 197)),
        ("vit_h14", 16, 80, (65, 257, 1370)),  # and 518 px: 37 x 37 patches + cls
        ("vit_2b14", 32, 80, (65, 257, 1370)),
        ("vit_6.5b14", 32, 128, (65, 257, 1370)),
    )
