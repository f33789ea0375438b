"""Bad images under evaluation's DALI decoder (#22): one line naming the file and the fix, nothing written."""

import os

import pytest

from mawstron.cli.main import main

from eval_helpers import make_imagenet_tree, save_encoder

pytest.importorskip("nvidia.dali")


def test_a_truncated_jpeg_in_an_imagenet_tree_under_dali(tmp_path, capsys):
    """A class folder holding a truncated JPEG: `features --loader dali` names the file and writes no .npy."""
    tree = make_imagenet_tree(str(tmp_path / "tree"), train_per_class=1, val_per_class=2)
    folder = os.path.join(tree, "val", "n01443537")
    good = os.path.join(folder, "n01443537_0.JPEG")
    bad = os.path.join(folder, "n01443537_9.JPEG")
    with open(good, "rb") as f, open(bad, "wb") as g:
        g.write(f.read()[:300])
    out = tmp_path / "f.npy"
    code = main(["features", "--checkpoint", save_encoder(str(tmp_path / "enc.safetensors")), "--images",
                 os.path.join(tree, "val"), "--out", str(out), "--device", "cpu", "--loader", "dali", "--quiet"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mawstron")]
    assert code == 2 and len(err) == 1, err
    assert bad in err[0] and "remove or replace" in err[0]
    assert not out.exists() and not (tmp_path / "f.json").exists()
