"""DALI and PyTorch shard loaders: shapes and targets, rank sharding, resume, bad data, eval loader, errors."""

import itertools
import json
import os

import pytest
import torch

from data_helpers import break_jpeg, drop_member, make_collection
from mawstron.core.data import DataConfig, build_eval_loader, build_train_loader
from mawstron.core.data.shards import build_vocab, expand_shards, load_synonyms
from mawstron.parallel.config import ConfigError, RunConfig, apply_overrides

LOADERS = ["dali", "torch"]


def take(loader, n):
    return list(itertools.islice(iter(loader), n))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("shards"))
    make_collection(out, images=64, shard_size=16, size=32)
    vocab = build_vocab(expand_shards(os.path.join(out, "train-*.tar")), min_count=2,
                        synonyms=load_synonyms(os.path.join(out, "synonyms.json")))
    json.dump(vocab, open(os.path.join(out, "vocab.json"), "w"))
    return out


def cfg_for(data, loader, **kw):
    return DataConfig(source="shards", shards=os.path.join(data, "train-*.tar"), vocab=os.path.join(data, "vocab.json"),
                      loader=loader, num_workers=kw.pop("num_workers", 1), **kw)


@pytest.mark.parametrize("loader", LOADERS)
def test_shapes_targets_and_normalisation(data, loader):
    ld = build_train_loader(cfg_for(data, loader), stage="wsp", img_size=24, micro_batch=4, seed=0)
    vocab = json.load(open(os.path.join(data, "vocab.json")))
    assert ld.num_classes == len(vocab["tags"])
    batches = take(ld, 3)
    for b in batches:
        assert b["images"].shape == (4, 3, 24, 24) and b["images"].dtype == torch.float32
        assert b["targets"].shape == (4, ld.num_classes) and b["targets"].dtype == torch.float32
        assert set(b["targets"].unique().tolist()) <= {0.0, 1.0}
    images = torch.cat([b["images"] for b in batches])
    assert -3 < images.mean() < 3 and images.min() < -0.5 and images.max() > 0.5  # normalised, not [0, 255]
    assert ld.stats()["images_seen"] == 12
    mae = build_train_loader(cfg_for(data, loader), stage="mae", img_size=24, micro_batch=4)
    assert mae.num_classes is None and "targets" not in take(mae, 1)[0]


@pytest.mark.parametrize("loader", LOADERS)
def test_resume_gives_the_same_batches(data, loader):
    cfg = cfg_for(data, loader, num_workers=2)
    full = take(build_train_loader(cfg, stage="wsp", img_size=16, micro_batch=8, seed=3), 12)  # > one epoch of 64
    a = build_train_loader(cfg, stage="wsp", img_size=16, micro_batch=8, seed=3)
    take(a, 7)
    state = json.loads(json.dumps(a.state_dict()))  # survives a checkpoint's serialisation
    b = build_train_loader(cfg, stage="wsp", img_size=16, micro_batch=8, seed=3)
    b.load_state_dict(state)
    rest = take(b, 5)
    for x, y in zip(full[7:], rest):
        assert torch.equal(x["images"], y["images"]) and torch.equal(x["targets"], y["targets"])
    assert b.stats()["images_seen"] == 96
    other = take(build_train_loader(cfg, stage="wsp", img_size=16, micro_batch=8, seed=4), 1)
    assert not torch.equal(other[0]["images"], full[0]["images"])


@pytest.mark.parametrize("loader", LOADERS)
def test_ranks_read_disjoint_shards(data, loader):
    stats = []
    for rank in range(2):
        ld = build_train_loader(cfg_for(data, loader), stage="mae", img_size=16, micro_batch=4, rank=rank,
                                world_size=2)
        take(ld, 1)
        stats.append(ld.stats())
    assert stats[0]["shards"] and stats[1]["shards"] and not set(stats[0]["shards"]) & set(stats[1]["shards"])
    assert set(stats[0]["shards"]) | set(stats[1]["shards"]) == set(expand_shards(os.path.join(data, "train-*.tar")))


def test_fewer_shards_than_ranks_splits_samples(data):
    one = os.path.join(data, "train-000000.tar")
    seen = []
    for rank in range(2):
        ld = build_train_loader(DataConfig(source="shards", shards=one, loader="torch", num_workers=0), stage="mae",
                                img_size=16, micro_batch=4, rank=rank, world_size=2)
        seen.append({s.key for _, s in ld.shards.samples})
    assert len(seen[0]) == len(seen[1]) == 8 and not seen[0] & seen[1]


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """Five shards of 8: a truncated JPEG, a JPEG with garbage inside, a sample without json, a truncated shard,
    and one file that is not a tar at all."""
    out = str(tmp_path_factory.mktemp("broken"))
    make_collection(out, images=32, shard_size=8, size=32, eval_images=0)
    break_jpeg(os.path.join(out, "train-000000.tar"), "000000002", how="truncate")
    break_jpeg(os.path.join(out, "train-000000.tar"), "000000005", how="garbage")
    drop_member(os.path.join(out, "train-000001.tar"), "000000009.json")
    drop_member(os.path.join(out, "train-000001.tar"), "000000009.txt")  # whichever layout synth chose for it
    drop_member(os.path.join(out, "train-000001.tar"), "000000011.txt")
    drop_member(os.path.join(out, "train-000001.tar"), "000000011.json")
    path = os.path.join(out, "train-000002.tar")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with open(os.path.join(out, "train-000004.tar"), "wb") as f:
        f.write(b"this is not a tar file" * 50)
    json.dump({"tags": ["red", "circle"], "synonyms": {"crimson": "red"}},
              open(os.path.join(out, "vocab.json"), "w"))
    return out


@pytest.mark.parametrize("loader", LOADERS)
def test_bad_samples_are_skipped_and_counted(broken, loader):
    cfg = cfg_for(broken, loader)
    ld = build_train_loader(cfg, stage="wsp", img_size=16, micro_batch=4, seed=0)
    batches = take(ld, 12)  # more than an epoch of the usable samples: the decoder never sees a bad one
    assert all(b["images"].shape == (4, 3, 16, 16) for b in batches)
    st = ld.stats()
    reasons = st["skipped_by_reason"]
    assert reasons["corrupt_jpeg"] == 2 and reasons["missing_json"] == 2
    assert reasons["truncated_shard"] == 1 and reasons["unreadable_shard"] == 1
    assert st["skipped"] == sum(reasons.values())
    worst = dict(st["worst_shards"])
    assert worst[os.path.join(broken, "train-000000.tar")] == 2
    # a two-tag vocabulary: many images have no known hashtag; they stay in the batch with all-zero rows
    zero_rows = sum(int((b["targets"].sum(1) == 0).sum()) for b in batches)
    assert zero_rows > 0 and st["no_known_hashtag"] == zero_rows


def test_validation_off_still_catches_truncated_jpegs(broken, tmp_path):
    cfg = DataConfig(source="shards", shards=os.path.join(broken, "train-00000[01].tar"), loader="torch",
                     validate=False, index_dir=str(tmp_path), num_workers=0)
    ld = build_train_loader(cfg, stage="mae", img_size=16, micro_batch=4)
    take(ld, 8)
    st = ld.stats()
    # the truncated JPEG fails the marker check; the garbage one passes it and fails in PIL at load time
    assert st["skipped_by_reason"]["corrupt_jpeg"] == 1 and st["skipped_by_reason"]["decode_error"] >= 1


def test_missing_path_or_vocab_is_a_clear_error(tmp_path, data):
    with pytest.raises(ValueError, match=r"no file matches .*mawstron data synth --out DIR"):
        build_train_loader(DataConfig(source="shards", shards=str(tmp_path / "x-*.tar")), stage="mae", img_size=16,
                           micro_batch=2)
    with pytest.raises(ValueError, match="mawstron data synth"):
        build_train_loader(DataConfig(source="shards"), stage="mae", img_size=16, micro_batch=2)
    with pytest.raises(ValueError, match="mawstron data vocab"):
        build_train_loader(DataConfig(source="shards", shards=os.path.join(data, "train-*.tar")), stage="wsp",
                           img_size=16, micro_batch=2)


def test_new_fields_work_with_set_overrides():
    cfg = apply_overrides(RunConfig(), assignments=["data.source=shards", "data.shards=/d/train-*.tar",
                                                    "data.loader=torch", "data.dali_device=cpu",
                                                    "data.validate=false", "data.shuffle_buffer=64"])
    assert cfg.data.loader == "torch" and cfg.data.validate is False and cfg.data.shuffle_buffer == 64
    with pytest.raises(ConfigError, match="data.dali_device must be one of"):
        apply_overrides(RunConfig(), assignments=["data.dali_device=gpu"])
    with pytest.raises(ConfigError, match="data.loader must be one of"):
        apply_overrides(RunConfig(), assignments=["data.loader=pil"])


@pytest.mark.parametrize("loader", LOADERS)
def test_finetune_targets_are_one_hot_labels(data, loader):
    cfg = DataConfig(source="shards", shards=os.path.join(data, "eval-train-*.tar"), loader=loader, num_workers=1)
    ld = build_train_loader(cfg, stage="finetune", img_size=16, micro_batch=5)
    assert ld.num_classes == 15  # from manifest.json
    b = take(ld, 1)[0]
    assert b["targets"].shape == (5, 15) and (b["targets"].sum(1) == 1).all()


def test_eval_loader_is_finite_ordered_and_complete(data):
    cfg = DataConfig(source="shards")
    shards = os.path.join(data, "eval-test-*.tar")
    batches = list(build_eval_loader(cfg, img_size=24, batch_size=8, shards=shards))
    labels = torch.cat([b["labels"] for b in batches])
    assert len(labels) == 30 and [len(b["labels"]) for b in batches] == [8, 8, 8, 6]
    assert labels.dtype == torch.int64 and batches[0]["images"].shape == (8, 3, 24, 24)
    again = list(build_eval_loader(cfg, img_size=24, batch_size=8, shards=shards))
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(batches, again))
    from mawstron.core import create_vit
    from mawstron.core.eval import extract_features

    feats, ys = extract_features(create_vit("vit_micro", img_size=24), batches)
    assert feats.shape[0] == 30 and torch.equal(ys, labels)


def test_mawstron_train_checks_the_data_before_launching(tmp_path, capsys):
    from mawstron.cli.main import main

    recipe = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "vit_tiny_mae.py")
    rc = main(["train", recipe, "--set", "data.source=shards", "--set", f"data.shards={tmp_path}/train-*.tar"])
    assert rc == 2
    assert "data error" in capsys.readouterr().err


def test_dali_recovers_from_a_corrupt_jpeg_the_index_did_not_catch(broken, tmp_path):
    cfg = DataConfig(source="shards", shards=os.path.join(broken, "train-000000.tar"), loader="dali", validate=False,
                     index_dir=str(tmp_path), num_workers=1, shuffle_buffer=0)
    ld = build_train_loader(cfg, stage="mae", img_size=16, micro_batch=4)
    with pytest.warns(UserWarning, match="re-validated"):
        batches = take(ld, 6)  # the decoder fails on the garbage JPEG; the loader re-indexes and goes on
    assert len(batches) == 6 and ld.stats()["skipped_by_reason"]["corrupt_jpeg"] == 2
