"""ViT presets, configs and forward shapes."""

import pytest
import torch

from mawstron.core import PRESETS, ViTConfig, count_parameters, create_vit, vit_config

PAPER = ["vit_b16", "vit_l16", "vit_h14", "vit_2b14", "vit_6.5b14"]


def expected_params(cfg: ViTConfig) -> int:
    """Independent count: patch conv, class token, position table, blocks, final norm, head."""
    d, m = cfg.embed_dim, cfg.hidden_dim
    block = (d * 3 * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d) + 4 * d
    head = d * cfg.num_classes + cfg.num_classes if cfg.num_classes else 0
    return cfg.patch_pixels * d + d + d + (1 + cfg.num_patches) * d + cfg.depth * block + 2 * d + head


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_on_meta_with_expected_parameter_count(name):
    with torch.device("meta"):
        model = create_vit(name)
    assert all(p.is_meta for p in model.parameters()), "meta construction must not allocate"
    assert count_parameters(model) == expected_params(model.config)


def test_paper_presets_match_published_sizes():
    # timm's own counts (timm 1.0.31): vit_base_patch16_224 with its 1000-class head, vit_huge_patch14_224 headless
    with torch.device("meta"):
        assert count_parameters(create_vit("vit_b16", num_classes=1000)) == 86_567_656
        assert count_parameters(create_vit("vit_l16", num_classes=1000)) == 304_326_632
        assert count_parameters(create_vit("vit_h14")) == 630_764_800
        big = count_parameters(create_vit("vit_6.5b14"))
    assert 6.4e9 < big < 6.5e9  # "about 6.4e9 parameters"


@pytest.mark.parametrize(
    "name,head_dim", [("vit_b16", 64), ("vit_l16", 64), ("vit_h14", 80), ("vit_2b14", 80), ("vit_6.5b14", 128)]
)
def test_head_dims(name, head_dim):
    assert vit_config(name).head_dim == head_dim


@pytest.mark.parametrize("name", ["vit_micro", "vit_tiny", "vit_tiny_h80"])
def test_forward_features_and_head_shapes(name):
    model = create_vit(name, num_classes=7).eval()
    c = model.config
    x = torch.randn(2, 3, c.img_size, c.img_size)
    feats = model.forward_features(x)
    assert feats.shape == (2, 1 + c.num_patches, c.embed_dim)
    assert model.forward_head(feats, pre_logits=True).shape == (2, c.embed_dim)
    assert model(x).shape == (2, 7)


def test_overrides_change_shape_and_keep_mlp_ratio():
    cfg = vit_config("vit_b16", img_size=518, patch_size=14, embed_dim=512, num_heads=8)
    assert cfg.num_patches == 37 * 37 and cfg.hidden_dim == 4 * 512 and cfg.depth == 12
    assert vit_config("vit_b16", img_size=518, patch_size=14).num_patches + 1 == 1370


def test_derived_configs_keep_the_mlp_ratio():
    import dataclasses

    from mawstron.core import MAEConfig

    assert dataclasses.replace(vit_config("vit_b16"), embed_dim=384).hidden_dim == 1536
    assert dataclasses.replace(MAEConfig(decoder_embed_dim=128), decoder_embed_dim=32).decoder_hidden_dim == 128
    assert vit_config("vit_b16", mlp_dim=1000).hidden_dim == 1000


def test_bad_configs_fail_with_a_message_naming_the_problem():
    with pytest.raises(KeyError, match="unknown ViT preset 'vit_q99'"):
        vit_config("vit_q99")
    with pytest.raises(TypeError, match="width"):
        create_vit("vit_micro", width=64)  # timm calls it embed_dim
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        vit_config("vit_micro", num_heads=3)
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        vit_config("vit_micro", img_size=30)


def test_wrong_image_size_is_a_clear_error():
    model = create_vit("vit_micro")
    with pytest.raises(ValueError, match="img_size=48"):
        model(torch.randn(1, 3, 48, 48))


def test_no_weight_decay_names_exist():
    model = create_vit("vit_micro")
    names = dict(model.named_parameters())
    assert model.no_weight_decay() <= set(names)


def test_drop_path_is_active_only_in_training():
    model = create_vit("vit_micro", drop_path_rate=0.5)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_init_schemes_differ_as_documented():
    torch.manual_seed(0)
    timm_init = create_vit("vit_tiny")
    mae_init = create_vit("vit_tiny", init="mae")
    w_timm = timm_init.blocks[0].mlp.fc1.weight
    w_mae = mae_init.blocks[0].mlp.fc1.weight
    assert abs(w_timm.std().item() - 0.02) < 0.002  # trunc-normal(0.02)
    bound = (6 / sum(w_mae.shape)) ** 0.5  # xavier-uniform
    assert w_mae.abs().max().item() <= bound and w_mae.abs().max().item() > 0.9 * bound
    assert torch.count_nonzero(timm_init.blocks[0].mlp.fc1.bias) == 0
