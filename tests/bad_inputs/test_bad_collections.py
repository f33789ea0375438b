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


def _images(folder, n, fmt="PNG"):
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (16, 16), (i * 20 % 256, 0, 0)).save(os.path.join(folder, f"img{i}.{fmt.lower()}"), fmt)


def _shard_bytes(out):
    return {n: open(os.path.join(out, n), "rb").read() for n in sorted(os.listdir(out)) if n.endswith(".tar")}


def test_from_folder_overwrite_skips_a_corrupt_image_and_swaps_only_when_complete(tmp_path, capsys):
    """data from-folder --overwrite: a corrupt image is skipped and counted; a failure midway keeps the old shards."""
    from mawstron.cli.main import main

    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    _images(src, 6)
    assert main(["data", "from-folder", src, "--out", out, "--shard-size", "4"]) == 0
    old = _shard_bytes(out)
    with open(os.path.join(src, "img2.png"), "wb") as f:
        f.write(b"not an image at all")
    assert main(["data", "from-folder", src, "--out", out, "--shard-size", "4", "--overwrite"]) == 0
    split = json.load(open(os.path.join(out, "manifest.json")))["splits"]["train"]
    assert split["skipped"].get("unreadable_source") == 1 and split["usable"] == 5, split
    assert _shard_bytes(out) != old
    kept = _shard_bytes(out)
    os.makedirs(os.path.join(src, "img9.png"))  # reading it fails midway (IsADirectoryError)
    assert main(["data", "from-folder", src, "--out", out, "--shard-size", "4", "--overwrite"]) != 0
    assert _shard_bytes(out) == kept  # the old shards are still there, whole
    assert [n for n in os.listdir(out) if n.startswith(".")] == []  # no staging folder left


def test_from_folder_does_not_follow_links_out_of_the_source(tmp_path):
    """A symlink in the source folder that points outside it is skipped and counted, never read into a shard."""
    from mawstron.core.data.from_folder import convert_folder

    src, outside = str(tmp_path / "src"), str(tmp_path / "private")
    _images(src, 3)
    _images(outside, 1, fmt="JPEG")
    secret = open(os.path.join(outside, "img0.jpeg"), "rb").read()
    os.symlink(os.path.join(outside, "img0.jpeg"), os.path.join(src, "zz_link.jpg"))
    entry = convert_folder(src, str(tmp_path / "out"), shard_size=10)
    assert entry["skipped"] == {"outside_source": 1} and entry["usable"] == 3, entry
    assert all(secret not in data for data in _shard_bytes(str(tmp_path / "out")).values())


def test_synth_overwrite_deletes_only_what_its_manifest_lists(tmp_path, capsys):
    """data synth --overwrite removes only its manifest's files; an unlisted train-*.tar is refused, not deleted."""
    from mawstron.cli.main import main

    out = str(tmp_path / "data")
    args = ["data", "synth", "--out", out, "--images", "20", "--size", "16", "--eval-images", "4", "--shard-size", "10"]
    assert main(args) == 0
    theirs = os.path.join(out, "train-000009.tar")
    with open(theirs, "wb") as f:
        f.write(b"someone else's shard")
    before = sorted(os.listdir(out))
    assert main(args + ["--overwrite"]) == 2
    assert "train-000009.tar" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == before and open(theirs, "rb").read() == b"someone else's shard"
