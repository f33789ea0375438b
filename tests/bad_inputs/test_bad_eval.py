"""Bad inputs to evaluation at scale (#22): each gets one line naming the input and the fix, and nothing is written."""

import os

import pytest
import torch

from mawstron.cli.main import main
from mawstron.core.eval import linear_probe
from mawstron.core.eval.linear import ProbeMemoryError

from eval_helpers import WNIDS, make_imagenet_tree, save_encoder


@pytest.fixture
def encoder(tmp_path):
    return save_encoder(str(tmp_path / "enc.safetensors"))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error message"
    assert len(err) == 1, err
    return err[0]


def test_val_classes_that_differ_from_train(tmp_path, encoder, capsys):
    """An ImageNet tree whose val/ has a class that train/ lacks is refused before any image is read."""
    tree = make_imagenet_tree(str(tmp_path / "tree"), train_per_class=2, val_per_class=1)
    os.rename(os.path.join(tree, "val", WNIDS[3]), os.path.join(tree, "val", "n09999999"))
    assert main(["eval", "--checkpoint", encoder, "--data", tree, "--json"]) == 2
    line = _one_line_error(capsys)
    assert "n09999999" in line and WNIDS[3] in line and "same classes" in line and tree in line


def test_an_empty_class_folder(tmp_path, encoder, capsys):
    """An empty class folder in train/ is named, with the fix, instead of a class without images."""
    tree = make_imagenet_tree(str(tmp_path / "tree"), train_per_class=2, val_per_class=1)
    os.makedirs(os.path.join(tree, "train", "n01494475"))
    assert main(["eval", "--checkpoint", encoder, "--data", tree]) == 2
    line = _one_line_error(capsys)
    assert "n01494475" in line and "holds no image" in line and "remove the empty folders" in line


def test_features_that_do_not_fit_memory():
    """A probe whose features cannot fit even in float16 says how much it needs and how much is free."""
    x, y = torch.randn(400, 64), torch.arange(400) % 8
    with pytest.raises(ProbeMemoryError) as e:
        linear_probe(x, y, x[:40], y[:40], memory_bytes=10_000)
    message = str(e.value)
    assert "\n" not in message and "440 x 64 features" in message and "MiB" in message and "fewer" in message


def test_a_checkpoint_whose_preset_does_not_match(tmp_path, capsys):
    """A consolidated file whose metadata names another preset than its weights have fails in one line."""
    wrong = save_encoder(str(tmp_path / "wrong.safetensors"), preset="vit_micro", metadata_preset="vit_tiny")
    tree = make_imagenet_tree(str(tmp_path / "tree"), train_per_class=2, val_per_class=1)
    assert main(["eval", "--checkpoint", wrong, "--data", tree, "--json"]) == 2
    line = _one_line_error(capsys)
    assert wrong in line and "does not fit" in line


def test_more_ranks_than_images(tmp_path, encoder, capsys, monkeypatch):
    """A rank of a world larger than the test split ends with the count and the fix, before joining any
    collective (every rank checks the same counts, so none waits for another)."""
    tree = make_imagenet_tree(str(tmp_path / "tree"), train_per_class=4, val_per_class=1)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(os, "_exit", lambda code: None)  # a launched rank leaves with os._exit
    out = tmp_path / "f.npy"
    assert main(["eval", "--checkpoint", encoder, "--data", tree, "--device", "cpu"]) == 2
    line = _one_line_error(capsys)
    assert "test split" in line and "4 images for 8 ranks" in line and "--gpus 4 or fewer" in line
    assert main(["features", "--checkpoint", encoder, "--images", os.path.join(tree, "val"), "--out", str(out),
                 "--device", "cpu"]) == 2
    assert "4 images for 8 ranks" in _one_line_error(capsys) and not out.exists()
