"""What the project writes loads back without guessing: metadata in the safetensors header (preset, classes,
vocabulary), folders through the reader ``mawstron.parallel`` registers, and a wrong preset named on mismatch."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from mawstron.core import create_vit, create_vit_from_checkpoint, guess_preset, load_pretrained, read_metadata
from mawstron.core.weights import read_checkpoint


def consolidated_like(path, preset="vit_micro", num_classes=3, vocab=("red", "green", "blue"), **sizes):
    """A file with the header `mawstron consolidate --keep-head` writes (``sizes``: the run's model.* overrides)."""
    model = create_vit(preset, num_classes=num_classes, **sizes)
    recorded = {"preset": preset, "img_size": 0, "patch_size": 0, "embed_dim": 0, "depth": 0, "num_heads": 0} | sizes
    meta = {"format": "timm", "preset": preset, "model": json.dumps(recorded),
            "stage": "wsp", "num_classes": str(num_classes), "vocab": json.dumps(list(vocab))}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    return model


def test_a_consolidated_file_builds_its_model_with_classes_and_vocabulary(tmp_path):
    path = tmp_path / "wsp.safetensors"
    src = consolidated_like(path)
    assert read_metadata(path)["num_classes"] == 3 and read_metadata(path)["vocab"] == ["red", "green", "blue"]
    model, report = create_vit_from_checkpoint(path)
    assert model.head.out_features == 3 and report.vocab == ["red", "green", "blue"] and report.num_classes == 3
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    report = load_pretrained(create_vit("vit_micro", num_classes=3), path)
    assert report.num_classes == 3 and report.vocab == ["red", "green", "blue"]
    report = load_pretrained(create_vit("vit_micro"), path)  # an encoder for features: the head is left out
    assert sorted(report.dropped) == ["head.bias", "head.weight"] and not report.unexpected


def test_a_run_with_another_patch_size_rebuilds_with_it(tmp_path):
    """model.patch_size (the study's 8 on vit_tiny's 32 px, whose preset patch is 4) is recorded and read back."""
    from mawstron.parallel.config import ModelConfig

    path = tmp_path / "p8.safetensors"
    src = consolidated_like(path, preset="vit_tiny", patch_size=8, depth=2)
    model, _ = create_vit_from_checkpoint(path)
    assert model.config.patch_size == 8 and model.config.num_patches == 16 and model.config.depth == 2
    assert all(torch.equal(model.state_dict()[k], v) for k, v in src.state_dict().items())
    cfg = ModelConfig(preset="vit_tiny", patch_size=8, depth=2)
    assert cfg.vit_overrides() == {"patch_size": 8, "depth": 2} and cfg.vit_config().num_patches == 16


def test_a_plain_timm_file_without_metadata_is_recognised_by_its_shapes(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(create_vit("vit_tiny", num_classes=7).state_dict(), path)
    assert guess_preset(torch.load(path)) == "vit_tiny"
    model, report = create_vit_from_checkpoint(path)
    assert model.config.embed_dim == 192 and model.head.out_features == 7 and report.num_classes == 7


def test_a_wrong_preset_names_the_one_the_checkpoint_holds(tmp_path):
    path = tmp_path / "tiny.safetensors"
    consolidated_like(path, preset="vit_tiny", num_classes=0, vocab=())
    with pytest.raises(RuntimeError) as e:
        load_pretrained(create_vit("vit_micro"), path)
    assert "vit_tiny" in str(e.value) and "size mismatch" not in str(e.value)
    with pytest.raises(RuntimeError, match="missing.*blocks.2.*vit_micro"):  # depth mismatch: the guess from shapes
        load_pretrained(create_vit("vit_micro", depth=3), create_vit("vit_micro").state_dict())


def test_a_folder_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        read_checkpoint(tmp_path)
    assert str(tmp_path) in str(e.value) and "mawstron consolidate" in str(e.value)


def test_head_metadata_records_the_vocabulary_or_the_classes(tmp_path):
    from mawstron.parallel.checkpoints.zero_weights import head_metadata

    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps({"tags": ["a", "b"], "counts": {}}))
    state = {"head.weight": torch.zeros(2, 4)}
    wsp = {"train": {"stage": "wsp"}, "data": {"vocab": str(vocab)}}
    assert head_metadata(state, wsp) == {"num_classes": "2", "vocab": '["a", "b"]'}
    assert head_metadata({"head.weight": torch.zeros(5, 4)}, wsp) == {"num_classes": "5"}  # vocab of another size
    assert head_metadata({}, wsp) == {}
    (tmp_path / "manifest.json").write_text(json.dumps({"classes": ["x", "y"]}))
    finetune = {"train": {"stage": "finetune"}, "data": {"shards": str(tmp_path / "eval-train-*.tar")}}
    assert json.loads(head_metadata(state, finetune)["vocab"]) == ["x", "y"]


def test_core_imports_neither_parallel_nor_deepspeed():
    code = ("import sys, mawstron.core, mawstron.core.weights; "
            "bad = [m for m in sys.modules if m.startswith(('deepspeed', 'mawstron.parallel'))]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
