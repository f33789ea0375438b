"""Evaluation at scale (#22): the fast probe against the float64 protocol, float16 / memory-mapped features, MAE's
SGD probe, ImageNet-style trees, zero-shot class names, and `eval --gpus 2` on CPU ranks against one rank."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import mawstron.core.eval.linear as linear
from mawstron.cli.main import main
from mawstron.core.eval import linear_probe
from mawstron.core.eval.linear import sgd_probe

from eval_helpers import make_imagenet_tree, save_encoder
from test_eval import gaussian_classes


def _blobs(separation=0.45, seed=3):
    x, y = gaussian_classes(30, 12, 48, separation, seed)
    tx, ty = gaussian_classes(20, 12, 48, separation, seed, noise_seed=seed + 50)
    return x, y, tx, ty


def test_float32_warm_started_probe_agrees_with_the_float64_fit(monkeypatch):
    x, y, tx, ty = _blobs()
    exact = linear_probe(x, y, tx, ty)
    assert exact.dtype == "float64" and 0.4 < exact.accuracy < 0.95  # neither trivial nor chance
    monkeypatch.setattr(linear, "FLOAT64_BELOW", 0)  # the float32 path that large problems take
    fast = linear_probe(x, y, tx, ty)
    assert fast.dtype == "float32" and fast.storage == "float32"
    assert abs(fast.accuracy - exact.accuracy) <= 0.01 and fast.l2 == exact.l2
    assert set(fast.val_accuracy) == set(linear.DEFAULT_L2_GRID)
    # the four positional arguments and .accuracy of the old API, and the protocol named for results JSON
    assert fast.describe()["protocol"] == "lbfgs" and "val_accuracy" in fast.describe()


def test_memory_mapped_features_fall_back_to_float16_when_float32_does_not_fit(tmp_path, monkeypatch):
    x, y, tx, ty = _blobs()
    monkeypatch.setattr(linear, "FLOAT64_BELOW", 0)
    reference = linear_probe(x, y, tx, ty)
    np.save(tmp_path / "train.npy", x.numpy())
    mapped = np.load(tmp_path / "train.npy", mmap_mode="r")
    n, d, c = len(y) + len(ty), x.shape[1], 12
    work = linear._working_bytes(d, c, linear._chunk_rows(n, d, c, torch.device("cpu")), 4)
    between = int((n * d * 3 + work) / 0.9)  # room for float16 features, not for float32
    half = linear_probe(mapped, y, tx, ty, memory_bytes=between)
    assert half.storage == "float16" and half.dtype == "float32"
    assert abs(half.accuracy - reference.accuracy) <= 0.02


def test_mae_sgd_probe_learns_separable_classes():
    x, y = gaussian_classes(40, 4, 16, 3.0, 0)
    tx, ty = gaussian_classes(40, 4, 16, 3.0, 0, noise_seed=99)
    result = sgd_probe(x, y, tx, ty, epochs=30, batch_size=64)
    assert result.protocol == "sgd" and result.accuracy > 0.95 and result.iterations == 30 * 2


def test_zero_shot_names_imagenet_folders_and_reads_templates(tmp_path):
    from mawstron.parallel.evaluation.zero_shot import class_names_for, read_templates

    tree = make_imagenet_tree(str(tmp_path / "tree"), train_per_class=1, val_per_class=1)
    assert class_names_for(os.path.join(tree, "val")) == ["tench", "goldfish", "great white shark", "tiger shark"]
    assert len(read_templates("", imagenet=True)) > len(read_templates("")) and "{}" in read_templates("")[0]
    (tmp_path / "t.txt").write_text("a photo of my {}.\n\nart of a {}\n")
    assert read_templates(str(tmp_path / "t.txt")) == ("a photo of my {}.", "art of a {}")


@pytest.fixture(scope="module")
def tree_and_encoder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet_tree")
    tree = make_imagenet_tree(str(root / "imagenet"), train_per_class=8, val_per_class=4, noise=60, contrast=0.04)
    return tree, save_encoder(str(root / "enc.safetensors"))


def test_eval_on_two_cpu_ranks_equals_one_rank(tree_and_encoder, capsys):
    """`mawstron eval --data TREE --gpus 2` (deepspeed launcher, gloo ranks): each rank extracts half of each
    split (its log says which, and that DALI decoded it), and the probe on the gathered features gives exactly the
    one-rank result."""
    tree, encoder = tree_and_encoder
    args = ["eval", "--checkpoint", encoder, "--data", tree, "--shots", "1,2", "--draws", "2", "--json",
            "--device", "cpu"]
    assert main(args) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["ranks"] == 1 and one["train_images"] == 32 and one["test_images"] == 16
    assert one["protocol"]["probe"] == "lbfgs" and one["protocol"]["l2_grid"] == list(linear.DEFAULT_L2_GRID)
    exe = os.path.join(os.path.dirname(sys.executable), "mawstron")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([exe, *args, "--gpus", "2"], capture_output=True, text=True, timeout=420, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout)  # stdout is the JSON alone
    assert two["ranks"] == 2
    # DALI is installed here: both runs decoded with its cpu pipeline (`mixed` needs a GPU encoder)
    assert one["decoder"] == two["decoder"] == "dali-cpu" and "decoded by DALI (cpu)" in proc.stderr
    for rank, (start, stop) in enumerate(((0, 15), (16, 31))):
        assert f"[rank {rank}/2] training: extracting images {start}..{stop} of 32 (16 images)" in proc.stderr
    assert "[rank 1/2] test: extracting images 8..15 of 16" in proc.stderr
    same = ("linear_probe_accuracy", "linear_probe_l2", "1_shot_accuracy", "2_shot_accuracy", "num_classes")
    assert {k: two[k] for k in same} == {k: one[k] for k in same}
    assert two["protocol"]["val_accuracy"] == one["protocol"]["val_accuracy"]
    assert 0.25 < one["linear_probe_accuracy"] < 1.0  # the data are neither trivial nor noise


def test_zero_shot_on_an_imagenet_tree_runs_on_the_device_and_names_its_protocol(tmp_path):
    """`eval --zero-shot` on ImageNet-style class folders: a MAWS-CLIP file (release layout + tokenizer), class
    names from the wnids, prompts from --templates, the protocol in the result."""
    from mawstron.core import create_clip
    from mawstron.core.clip_weights import ours_to_release
    from mawstron.core.text import train_tokenizer
    from mawstron.parallel.evaluation.zero_shot import evaluate_zero_shot

    from test_lit import TINY_LIT

    tokenizer = train_tokenizer(["a photo of a tench", "a goldfish", "great white shark", "tiger shark"] * 20, 100, 8)
    torch.manual_seed(0)
    model = create_clip("vit_micro", TINY_LIT, vocab_size=tokenizer.get_vocab_size()).eval()
    path = str(tmp_path / "clip.pt")
    torch.save(ours_to_release(model.state_dict()), path)
    tokenizer.save(str(tmp_path / "clip.tokenizer.json"))
    tree = make_imagenet_tree(str(tmp_path / "tree"), train_per_class=1, val_per_class=2)
    (tmp_path / "t.txt").write_text("a photo of a {}.\nart of the {}\n")
    result = evaluate_zero_shot(path, os.path.join(tree, "val"), templates=str(tmp_path / "t.txt"), device="cpu")
    assert result["num_classes"] == 4 and result["test_images"] == 8 and 0 <= result["zero_shot_top1"] <= 1
    assert result["zero_shot_top5"] == 1.0  # 4 classes: the top 5 hold them all
    assert result["protocol"]["templates"] == 2 and result["protocol"]["device"] == "cpu"


def test_eval_scale_benchmark_runs_at_its_small_size(tmp_path):
    """benchmarks/eval_scale.py (tiny settings): features images/s, the probe against the old one, the SGD probe,
    and a JSON with the device and commit."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import eval_scale

    out = tmp_path / "eval_scale.json"
    assert eval_scale.main(["--device", "cpu", "--model", "vit_micro", "--images", "8", "--batch-size", "4",
                            "--probe-n", "300", "--probe-d", "32", "--probe-c", "10", "--separation", "0.4",
                            "--baseline", "--sgd", "--sgd-epochs", "5", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["features"]["images_per_s_per_rank"] > 0 and result["features"]["images"] == 8
    probe = result["probe"]
    assert probe["lbfgs"]["protocol"] == "lbfgs" and probe["sgd"]["epochs"] == 5
    assert abs(probe["accuracy_difference_points"]) <= 1.0 and probe["speedup"] > 0
    assert result["device"] and "git_commit" in result and "date" in result


def test_imagenet_webdataset_shards_with_cls_labels(tmp_path):
    """ImageNet-1k as webdataset shards (KEY.jpg + KEY.cls) in train/ and val/: --data finds them and the
    evaluation loader reads the .cls labels."""
    import io
    import tarfile

    from PIL import Image

    from mawstron.core.data import DataConfig, build_eval_loader
    from mawstron.parallel.evaluation.evaluate import eval_splits

    for split in ("train", "val"):
        os.makedirs(tmp_path / split)
        with tarfile.open(tmp_path / split / f"imagenet1k-{split}-0000.tar", "w") as tar:
            for i, label in enumerate((3, 0, 999)):
                jpeg = io.BytesIO()
                Image.new("RGB", (40, 30), (i * 80, 20, 200)).save(jpeg, format="JPEG")
                for ext, data in (("jpg", jpeg.getvalue()), ("cls", str(label).encode())):
                    info = tarfile.TarInfo(f"{split}_{i:04d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    train, test = eval_splits(str(tmp_path))
    assert train == str(tmp_path / "train" / "*.tar") and test == str(tmp_path / "val" / "*.tar")
    loader = build_eval_loader(DataConfig(source="shards"), img_size=32, batch_size=8, shards=test)
    batch = next(iter(loader))
    assert batch["labels"].tolist() == [3, 0, 999] and batch["images"].shape == (3, 3, 32, 32)
