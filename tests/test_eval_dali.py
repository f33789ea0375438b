"""DALI decoding for evaluation (#22): DALI's cpu pipeline against the PIL path on webdataset shards (.json and .cls
labels), ImageFolder trees and plain folders, and the choice of decoder (mixed for a GPU encoder, which cannot run
here: the GPU machine has no DALI either).  `eval --gpus 2` with DALI against one rank: test_eval_scale.py."""

import io
import os
import tarfile

import pytest
import torch

import mawstron.parallel.evaluation.evaluate as evaluate_mod
from mawstron.core.data import DataConfig, build_eval_loader
from mawstron.core.data.dali_eval import DaliEvalBatches, dali_eval_device, default_eval_loader
from mawstron.core.data.image_folder import image_loader
from mawstron.core.eval import linear_probe
from mawstron.core.eval.linear import resolve_device
from mawstron.parallel.evaluation.evaluate import Ranks, eval_decoder, extract_split, load_encoder_from_checkpoint

from data_helpers import make_collection
from eval_helpers import make_imagenet_tree, save_encoder

pytest.importorskip("nvidia.dali")

# normalised units (1 grey level ~ 0.017): the same libjpeg-turbo decode, DALI's and PIL's bilinear resampling
# round differently by at most about one grey level
TOLERANCE = 0.05


def _pil(loader, items):
    pairs = [loader.load_item(item) for item in items]
    return torch.stack([x for x, _ in pairs]), [y for _, y in pairs]


def _dali(loader, items, batch_size):
    batches = list(DaliEvalBatches(loader, items, batch_size=batch_size, device="cpu"))
    assert all(b["images"].shape[0] <= batch_size for b in batches) and len(batches) == -(-len(items) // batch_size)
    return torch.cat([b["images"] for b in batches]), torch.cat([b["labels"] for b in batches]).tolist()


def _cls_shard(path, labels, size=(50, 37)):
    from PIL import Image

    with tarfile.open(path, "w") as tar:
        for i, label in enumerate(labels):
            jpeg = io.BytesIO()
            Image.effect_noise(size, 60).convert("RGB").save(jpeg, format="JPEG")
            for ext, data in (("jpg", jpeg.getvalue()), ("cls", str(label).encode())):
                info = tarfile.TarInfo(f"s{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_dali_reads_a_share_of_shards_in_order_with_the_pil_path_s_pixels_and_labels(tmp_path):
    """A share that starts inside one shard and ends inside another (json labels), and .cls shards of a non-square
    size: the same labels in the same order as the PIL path, pixels within a grey level or so, a partial last
    batch."""
    make_collection(str(tmp_path / "c"), images=8, shard_size=8, eval_images=20, size=48)
    loader = build_eval_loader(DataConfig(source="shards"), img_size=32, batch_size=4,
                               shards=str(tmp_path / "c" / "eval-train-*.tar"))
    assert len(loader.paths) == 3
    share = loader.items()[5:19]
    images, labels = _dali(loader, share, 4)
    ref_images, ref_labels = _pil(loader, share)
    assert labels == ref_labels and images.shape == ref_images.shape == (14, 3, 32, 32)
    assert (images - ref_images).abs().max() < TOLERANCE

    os.makedirs(tmp_path / "cls")
    _cls_shard(str(tmp_path / "cls" / "a-0.tar"), (3, 0, 999))
    _cls_shard(str(tmp_path / "cls" / "a-1.tar"), (7, 1))
    loader = build_eval_loader(DataConfig(source="shards"), img_size=24, batch_size=4,
                               shards=str(tmp_path / "cls" / "a-*.tar"))
    images, labels = _dali(loader, loader.items(), 2)
    ref_images, ref_labels = _pil(loader, loader.items())
    assert labels == ref_labels == [3, 0, 999, 7, 1]
    assert (images - ref_images).abs().max() < TOLERANCE


def test_dali_features_of_an_imagenet_tree_give_the_pil_probe_and_labels(tmp_path):
    """extract_split with DALI's cpu decoder on ImageNet-style class folders: the same labels in the same order,
    features within the decoders' tolerance, the same probe accuracy; a plain folder gets label -1."""
    tree = make_imagenet_tree(str(tmp_path / "tree"), train_per_class=6, val_per_class=3, size=40, noise=60,
                              contrast=0.03)
    model = load_encoder_from_checkpoint(save_encoder(str(tmp_path / "enc.safetensors")))
    ranks = Ranks("cpu")
    splits = {}
    for split in ("train", "val"):
        loader = build_eval_loader(DataConfig(source="shards"), img_size=model.config.img_size, batch_size=5,
                                   shards=os.path.join(tree, split))
        for decoder in ("pil", "dali-cpu"):
            splits[split, decoder] = extract_split(model, loader, ranks, split=split, batch_size=5, quiet=True,
                                                   decoder=decoder)
    for split in ("train", "val"):
        (x, y), (dx, dy) = splits[split, "pil"], splits[split, "dali-cpu"]
        assert dy.tolist() == y.tolist() and dx.shape == x.shape
        assert (dx - x).norm() / x.norm() < 0.01, ((dx - x).norm() / x.norm())
    pil = linear_probe(*splits["train", "pil"], *splits["val", "pil"])
    dali = linear_probe(*splits["train", "dali-cpu"], *splits["val", "dali-cpu"])
    assert dali.accuracy == pil.accuracy and 0.25 < pil.accuracy < 1.0, (pil.accuracy, dali.accuracy)

    plain = image_loader(os.path.join(tree, "val", "n01440764"), img_size=16, batch_size=2)
    images, labels = _dali(plain, plain.items(), 2)
    assert labels == [-1, -1, -1] and (images - _pil(plain, plain.items())[0]).abs().max() < TOLERANCE


def test_the_decoder_is_mixed_for_a_gpu_encoder_and_pil_without_dali(monkeypatch, tmp_path):
    """cuda available -> the encoder's device is cuda -> DALI decodes with `mixed` (nvJPEG); a CPU encoder -> cpu;
    --loader torch, no DALI, or https:// shards -> PIL (with the reason when DALI was asked for)."""
    assert dali_eval_device(torch.device("cuda", 1)) == "mixed" and dali_eval_device("cuda") == "mixed"
    assert dali_eval_device(torch.device("cpu")) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda" and dali_eval_device(resolve_device("auto")) == "mixed"
    monkeypatch.undo()
    assert default_eval_loader() == "dali"
    tree = make_imagenet_tree(str(tmp_path / "tree"), train_per_class=1, val_per_class=1)
    loader = build_eval_loader(DataConfig(source="shards"), img_size=16, batch_size=2,
                               shards=os.path.join(tree, "val"))
    assert eval_decoder("auto", loader, torch.device("cuda", 0)) == ("dali-mixed", "")
    assert eval_decoder("dali", loader, torch.device("cpu")) == ("dali-cpu", "")
    assert eval_decoder("torch", loader, torch.device("cuda", 0)) == ("pil", "")
    loader.paths = ["https://host/val-000000.tar"]
    decoder, why = eval_decoder("dali", loader, torch.device("cpu"))
    assert decoder == "pil" and "https://" in why
    monkeypatch.setattr(evaluate_mod, "dali_installed", lambda: False)
    assert eval_decoder("auto", loader, torch.device("cuda", 0)) == ("pil", "")
    decoder, why = eval_decoder("dali", loader, torch.device("cuda", 0))
    assert decoder == "pil" and "not installed" in why
