"""Data people already have: the ImageFolder reader (evaluation and fine-tuning), `mawstron data from-folder`,
and the commands that read folders of images (`features`, `show-mae`) or pick a checkpoint step (`eval --tag`)."""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from folder_helpers import make_image_folder
from mawstron.cli.main import main
from mawstron.core import MAEConfig, create_mae, create_vit
from mawstron.core.data import DataConfig, build_eval_loader, build_train_loader
from mawstron.core.data.eval_loader import eval_transform
from mawstron.core.data.shards import build_vocab, expand_shards
from mawstron.parallel.config import ModelConfig
from mawstron.parallel.evaluation.evaluate import checkpoint_tag


@pytest.fixture
def folder(tmp_path):
    root = str(tmp_path / "imagefolder")
    counts = make_image_folder(root, images=20)
    return root, counts


def test_image_folder_eval_loader_numbers_classes_by_sorted_name(folder):
    root, counts = folder
    loader = build_eval_loader(DataConfig(), img_size=32, batch_size=8, shards=root)
    batches = list(loader)
    labels = torch.cat([b["labels"] for b in batches])
    assert len(labels) == 20 and len(batches) == 3
    classes = sorted(counts)
    assert loader.classes == classes
    assert [int((labels == i).sum()) for i in range(len(classes))] == [counts[c] for c in classes]
    first = sorted(os.listdir(os.path.join(root, classes[0])))[0]
    with open(os.path.join(root, classes[0], first), "rb") as f:
        torch.testing.assert_close(batches[0]["images"][0], eval_transform(f.read(), 32))


def test_image_folder_train_loader_is_deterministic_resumable_and_split_by_rank(folder):
    root, counts = folder
    cfg = DataConfig(source="folder", shards=root, num_workers=0)
    kwargs = dict(stage="finetune", img_size=32, micro_batch=4, world_size=2, seed=0)
    a = build_train_loader(cfg, rank=0, **kwargs)
    b = build_train_loader(cfg, rank=1, **kwargs)
    assert a.num_classes == len(counts) and not set(a.samples) & set(b.samples)
    stream = iter(a)
    first = [next(stream) for _ in range(3)]
    assert first[0]["images"].shape == (4, 3, 32, 32) and torch.equal(first[0]["targets"].sum(1), torch.ones(4))
    resumed = build_train_loader(cfg, rank=0, **kwargs)
    resumed.load_state_dict(a.state_dict() | {"batches_served": 1})
    again = next(iter(resumed))
    assert torch.equal(again["images"], first[1]["images"]) and torch.equal(again["targets"], first[1]["targets"])
    with pytest.raises(ValueError, match="from-folder"):
        build_train_loader(cfg, rank=0, **{**kwargs, "stage": "wsp"})


def test_from_folder_imagefolder_to_indexed_shards(folder, tmp_path, capsys):
    root, counts = folder
    out = str(tmp_path / "shards")
    assert main(["data", "from-folder", root, "--out", out, "--shard-size", "8"]) == 0
    assert "wrote 20 of 20 images (imagefolder) in 3 shards" in capsys.readouterr().out
    shards = expand_shards(f"{out}/train-*.tar")
    assert len(shards) == 3 and all(os.path.isfile(s + ".idx") for s in shards)
    from_shards = list(build_eval_loader(DataConfig(), img_size=32, batch_size=32, shards=f"{out}/train-*.tar"))[0]
    direct = list(build_eval_loader(DataConfig(), img_size=32, batch_size=32, shards=root))[0]
    assert torch.equal(from_shards["labels"], direct["labels"])  # JPEG bytes copied: identical pixels
    torch.testing.assert_close(from_shards["images"], direct["images"])
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["num_classes"] == len(counts) and manifest["classes"] == sorted(counts)
    # a validation split with fewer classes keeps the training split's numbering
    val = str(tmp_path / "val")
    only = sorted(counts)[1]
    os.makedirs(os.path.join(val, only))
    src = os.path.join(root, only, sorted(os.listdir(os.path.join(root, only)))[0])
    Image.open(src).save(os.path.join(val, only, "a.png"))  # PNG: re-encoded as JPEG
    assert main(["data", "from-folder", val, "--out", out, "--split", "val"]) == 0
    val_batch = list(build_eval_loader(DataConfig(), img_size=32, batch_size=4, shards=f"{out}/val-*.tar"))[0]
    assert val_batch["labels"].tolist() == [1]
    assert main(["data", "from-folder", root, "--out", out]) == 2  # existing shards are not overwritten silently
    assert "--overwrite" in capsys.readouterr().err
    assert main(["data", "from-folder", root, "--out", out, "--overwrite", "--shard-size", "20"]) == 0
    assert len(expand_shards(f"{out}/train-*.tar")) == 1  # the old shards went


def test_from_folder_images_with_caption_and_hashtag_sidecars(tmp_path):
    src = tmp_path / "web"
    src.mkdir()
    for i, colour in enumerate(["red", "blue", "red"]):
        Image.new("RGB", (24, 24), colour).save(src / f"img{i}.jpg")
    (src / "img0.txt").write_text("my new car #red #car")
    (src / "img1.json").write_text(json.dumps({"hashtags": ["blue", "sky"]}))
    out = str(tmp_path / "shards")
    assert main(["data", "from-folder", str(src), "--out", out]) == 0  # img2 has no sidecar: kept, no tags
    vocab = build_vocab(expand_shards(f"{out}/train-*.tar"))
    assert set(vocab["tags"]) == {"red", "car", "blue", "sky"} and vocab["counts"]["red"] == 1
    assert main(["data", "from-folder", str(tmp_path / "nothing"), "--out", out]) == 2


def test_features_command_and_show_mae(folder, tmp_path, capsys):
    root, _ = folder
    torch.manual_seed(0)
    model = create_vit("vit_micro").eval()
    weights = str(tmp_path / "micro.safetensors")
    save_file(model.state_dict(), weights, metadata={"model": json.dumps(dataclasses.asdict(ModelConfig("vit_micro")))})
    out = str(tmp_path / "feats.npy")
    # --loader torch: PIL's pixels exactly (DALI's are within a grey level: test_eval_dali.py)
    assert main(["features", "--checkpoint", weights, "--images", root, "--out", out, "--batch-size", "7",
                 "--loader", "torch"]) == 0
    feats = np.load(out)
    index = json.load(open(str(tmp_path / "feats.json")))
    assert feats.shape == (20, 64) and len(index["images"]) == 20 and len(index["labels"]) == 20
    with open(os.path.join(root, index["images"][3]), "rb") as f:
        expected = model.forward_features(eval_transform(f.read(), 32)[None])[0, 0]
    np.testing.assert_allclose(feats[3], expected.detach().numpy(), rtol=1e-4, atol=1e-5)
    assert main(["features", "--checkpoint", weights, "--images", str(tmp_path / "none"), "--out", out]) == 2
    assert "holds no image" in capsys.readouterr().err

    mae_cfg = MAEConfig(decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    mae = create_mae("vit_micro", mae=mae_cfg)
    mae_file = str(tmp_path / "mae.safetensors")
    save_file(mae.state_dict(), mae_file, metadata={"model": json.dumps(dataclasses.asdict(ModelConfig("vit_micro"))),
                                                    "mae": json.dumps(dataclasses.asdict(mae_cfg))})
    png = str(tmp_path / "grid.png")
    assert main(["show-mae", "--checkpoint", mae_file, "--images", root, "--max-images", "3", "--out", png]) == 0
    grid = np.asarray(Image.open(png))
    assert grid.shape == (3 * 34 - 2, 3 * 34 - 2, 3)
    original, masked = grid[:32, :32].astype(int), grid[:32, 34:66].astype(int)
    differs = np.abs(original - masked).sum(-1) > 30
    assert 0.5 < differs.mean() < 0.95  # 75% of the patches hidden (some hidden patches look like grey anyway)
    assert main(["show-mae", "--checkpoint", weights, "--images", root, "--out", png]) == 2  # no decoder
    assert "no decoder" in capsys.readouterr().err


def test_eval_tag_accepts_a_step_or_a_tag_and_lists_the_choices(tmp_path):
    ckpt = tmp_path / "checkpoints"
    for step in (4, 8):
        (ckpt / f"step_{step:08d}").mkdir(parents=True)
        (ckpt / f"step_{step:08d}" / "COMPLETE").write_text("{}")
    (ckpt / "latest").write_text("step_00000008")
    assert checkpoint_tag(str(ckpt), "4") == "step_00000004"
    assert checkpoint_tag(str(ckpt), "step_00000008") == "step_00000008"
    assert checkpoint_tag(str(ckpt), None) is None
    with pytest.raises(ValueError, match="step_00000004, step_00000008"):
        checkpoint_tag(str(ckpt), "12")
    with pytest.raises(ValueError, match="checkpoints/ folder"):
        checkpoint_tag(str(tmp_path), "4")


def test_features_and_show_mae_read_shards_too(tmp_path):
    from data_helpers import make_collection

    data = str(tmp_path / "data")
    make_collection(data, images=8, shard_size=8, eval_images=6)
    torch.manual_seed(0)
    weights = str(tmp_path / "micro.safetensors")
    save_file(create_vit("vit_micro").state_dict(), weights,
              metadata={"model": json.dumps(dataclasses.asdict(ModelConfig("vit_micro")))})
    out = str(tmp_path / "f.npy")
    assert main(["features", "--checkpoint", weights, "--images", f"{data}/train-*.tar", "--out", out]) == 0
    index = json.load(open(str(tmp_path / "f.json")))
    assert np.load(out).shape == (8, 64) and "labels" not in index
    assert index["images"][0] == "train-000000.tar:000000000"
    assert main(["features", "--checkpoint", weights, "--images", f"{data}/eval-test-*.tar", "--out", out]) == 0
    assert len(json.load(open(str(tmp_path / "f.json")))["labels"]) == 6


def test_a_val_folder_with_fewer_classes_keeps_the_training_numbering(folder, tmp_path):
    from mawstron.core.data.image_folder import align_classes

    root, counts = folder
    last = sorted(counts)[-1]
    val = tmp_path / "val" / last
    val.mkdir(parents=True)
    src = os.path.join(root, last, sorted(os.listdir(os.path.join(root, last)))[0])
    Image.open(src).save(val / "x.jpg")
    train = build_eval_loader(DataConfig(), img_size=32, batch_size=4, shards=root)
    test = build_eval_loader(DataConfig(), img_size=32, batch_size=4, shards=str(tmp_path / "val"))
    assert next(iter(test))["labels"].tolist() == [0]  # alone, the folder's only class is class 0
    align_classes(train, test)
    assert next(iter(test))["labels"].tolist() == [len(counts) - 1]
    (tmp_path / "val" / "zebra").mkdir()
    Image.open(src).save(tmp_path / "val" / "zebra" / "y.jpg")
    with pytest.raises(ValueError, match="zebra"):
        align_classes(train, build_eval_loader(DataConfig(), img_size=32, batch_size=4, shards=str(tmp_path / "val")))
