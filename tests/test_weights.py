"""Checkpoint layouts: round trips, MAE and DeepSpeed wrappers, encoder-only loads."""

import pytest
import torch
from safetensors.torch import save_file

from mawstron.core import create_mae, create_vit, create_wsp, encoder_state_dict, load_pretrained, read_state_dict


def same_params(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_state_dict_round_trip_through_a_file(tmp_path, suffix):
    src = create_vit("vit_micro", num_classes=4)
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    else:
        torch.save(src.state_dict(), path)
    dst = create_vit("vit_micro", num_classes=4)
    assert not same_params(src, dst)
    report = load_pretrained(dst, path)
    assert same_params(src, dst) and not (report.missing or report.unexpected)


def test_mae_repository_layout_loads_the_encoder(tmp_path):
    mae = create_mae("vit_micro", decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    torch.save({"model": mae.state_dict(), "epoch": 3}, tmp_path / "checkpoint-3.pth")
    vit = create_vit("vit_micro")
    report = load_pretrained(vit, tmp_path / "checkpoint-3.pth")
    assert report.dropped and all(k.startswith(("decoder_", "mask_token")) for k in report.dropped)
    assert same_params(vit, type(vit)(vit.config)) is False
    for k, v in vit.state_dict().items():
        assert torch.equal(v, mae.state_dict()[k])


def test_encoder_checkpoint_into_a_wsp_model_starts_a_fresh_head():
    mae = create_mae("vit_micro", decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    wsp = create_wsp("vit_micro", num_classes=9)
    head_before = wsp.head.weight.detach().clone()
    report = load_pretrained(wsp, encoder_state_dict(mae.state_dict()))
    assert sorted(report.missing) == ["head.bias", "head.weight"]
    assert torch.equal(wsp.head.weight, head_before)
    assert torch.equal(wsp.blocks[1].mlp.fc2.weight, mae.blocks[1].mlp.fc2.weight)


def test_wrapper_prefixes_are_stripped():
    src = create_vit("vit_micro")
    wrapped = {"module": {f"module.{k}": v for k, v in src.state_dict().items()}}
    clip = {f"vision_encoder.{k}": v for k, v in src.state_dict().items()}
    for raw in (wrapped, clip):
        dst = create_vit("vit_micro")
        load_pretrained(dst, raw)
        assert same_params(src, dst)


def test_a_mismatched_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="missing.*blocks.2"):
        load_pretrained(create_vit("vit_micro", depth=3), create_vit("vit_micro").state_dict())
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        read_state_dict(tmp_path / "nope.pt")
    report = load_pretrained(create_vit("vit_micro", depth=3), create_vit("vit_micro").state_dict(), strict=False)
    assert any(k.startswith("blocks.2.") for k in report.missing)


def test_classifier_head_of_another_size_is_dropped():
    src = create_vit("vit_micro", num_classes=1000)
    dst = create_vit("vit_micro", num_classes=10)
    report = load_pretrained(dst, src.state_dict())
    assert report.dropped == ["head.weight", "head.bias"]
