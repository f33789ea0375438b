"""The synthetic loader meets the loader contract: shapes, determinism, resumable position, rank disjointness."""

import itertools

import torch

from mawstron.core.data import DataConfig, build_train_loader


def take(loader, n):
    return list(itertools.islice(iter(loader), n))


def test_shapes_and_targets():
    loader = build_train_loader(DataConfig(), stage="wsp", img_size=32, micro_batch=4)
    batch = take(loader, 1)[0]
    assert batch["images"].shape == (4, 3, 32, 32) and batch["images"].dtype == torch.float32
    assert batch["targets"].shape == (4, loader.num_classes)
    assert (batch["targets"].sum(1) == 2).all()
    mae = build_train_loader(DataConfig(), stage="mae", img_size=32, micro_batch=4)
    assert "targets" not in take(mae, 1)[0] and mae.num_classes is None


def test_resume_continues_the_same_stream():
    a = build_train_loader(DataConfig(), stage="wsp", img_size=16, micro_batch=2, seed=3)
    full = take(a, 5)
    b = build_train_loader(DataConfig(), stage="wsp", img_size=16, micro_batch=2, seed=3)
    take(b, 2)
    state = b.state_dict()
    c = build_train_loader(DataConfig(), stage="wsp", img_size=16, micro_batch=2, seed=3)
    c.load_state_dict(state)
    rest = take(c, 3)
    for x, y in zip(full[2:], rest):
        assert torch.equal(x["images"], y["images"]) and torch.equal(x["targets"], y["targets"])
    assert c.stats()["images_seen"] == 10


def test_ranks_see_different_images():
    r0 = take(build_train_loader(DataConfig(), stage="mae", img_size=16, micro_batch=2, rank=0, world_size=2), 1)
    r1 = take(build_train_loader(DataConfig(), stage="mae", img_size=16, micro_batch=2, rank=1, world_size=2), 1)
    assert not torch.equal(r0[0]["images"], r1[0]["images"])
