"""Collections whose labels, images or folders are wrong: refused when the run starts, or skipped and counted, and
an overwrite never loses the old collection before the new one is whole."""

import json
import os

import pytest

from data_helpers import make_collection, rewrite_shard
from mawstron.core.data import DataConfig, build_train_loader


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("collection"))
    make_collection(out, images=16, shard_size=16, size=32, eval_images=24)
    return out


def test_an_out_of_range_finetuning_label_is_refused_when_the_rank_starts(collection, tmp_path):
    """A fine-tuning label >= num_classes is named when the loader is built, not when a batch meets it."""
    import shutil

    shard = str(tmp_path / "eval-train-000000.tar")
    shutil.copy(os.path.join(collection, "eval-train-000000.tar"), shard)
    shutil.copy(os.path.join(collection, "manifest.json"), str(tmp_path / "manifest.json"))
    num_classes = json.load(open(os.path.join(collection, "manifest.json")))["num_classes"]
    victim = []

    def edit(name, data):
        if name.endswith(".json") and not victim:
            victim.append(name[:-5])
            return json.dumps({**json.loads(data), "label": num_classes + 3}).encode()
        return data

    rewrite_shard(shard, edit)
    cfg = DataConfig(source="shards", shards=shard, loader="torch", num_workers=0, index_dir=str(tmp_path / "ix"))
    with pytest.raises(ValueError) as err:
        build_train_loader(cfg, stage="finetune", img_size=32, micro_batch=4)
    message = str(err.value)
    assert "\n" not in message and shard in message and repr(victim[0]) in message
    assert f"label {num_classes + 3}" in message and "manifest.json" in message
