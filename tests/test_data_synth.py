"""`mawstron data synth` and `mawstron data vocab`: real JPEG shards, determinism, noisy-but-informative tags."""

import hashlib
import json
import os
import tarfile
from collections import Counter

import pytest

from data_helpers import make_collection
from mawstron.cli.main import main
from mawstron.core.data.shards import (build_index, build_vocab, canonical, expand_shards, load_synonyms,
                                       parse_meta, raw_hashtags, tar_members)
from mawstron.core.data.synth import CLASSES, SYNONYMS, make_sample


def digest(folder):
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        if name.endswith((".tar", ".json")):
            h.update(name.encode() + open(os.path.join(folder, name), "rb").read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synth"))
    assert main(["data", "synth", "--out", out, "--images", "400", "--seed", "5", "--size", "48",
                 "--eval-images", "60", "--shard-size", "100"]) == 0
    return out


def test_layout_manifest_and_real_jpegs(collection):
    names = sorted(os.listdir(collection))
    assert [n for n in names if n.startswith("train-")] == [f"train-{k:06d}.tar" for k in range(4)]
    assert "eval-train-000000.tar" in names and "eval-test-000000.tar" in names
    manifest = json.load(open(os.path.join(collection, "manifest.json")))
    assert manifest["counts"] == {"train": 400, "eval-train": 60, "eval-test": 60}
    assert manifest["num_classes"] == len(CLASSES) == 15 and manifest["seed"] == 5 and manifest["size"] == 48
    from PIL import Image

    with tarfile.open(os.path.join(collection, "train-000000.tar")) as tar:
        members = tar.getmembers()
        jpgs = [m for m in members if m.name.endswith(".jpg")]
        assert len(jpgs) == 100
        im = Image.open(tar.extractfile(jpgs[0]))
        assert im.format == "JPEG" and im.size == (48, 48)
        exts = Counter(m.name.split(".", 1)[1] for m in members)
        assert exts["json"] > 0 and exts["txt"] > 0  # both img2dataset caption layouts occur


def test_same_seed_same_bytes_other_seed_differs(collection, tmp_path):
    again = str(tmp_path / "again")
    main(["data", "synth", "--out", again, "--images", "400", "--seed", "5", "--size", "48", "--eval-images", "60",
          "--shard-size", "100", "--workers", "2"])
    assert digest(again) == digest(collection)
    other = str(tmp_path / "other")
    main(["data", "synth", "--out", other, "--images", "400", "--seed", "6", "--size", "48", "--eval-images", "60",
          "--shard-size", "100"])
    assert digest(other) != digest(collection)


def _train_metas(folder):
    for shard in expand_shards(os.path.join(folder, "train-*.tar")):
        ix = build_index(shard, validate=False)
        with open(shard, "rb") as f:
            for s in ix.samples:
                f.seek(s.meta[0])
                yield parse_meta(f.read(s.meta[1]), s.meta_ext)


def test_hashtags_are_noisy_like_web_hashtags(collection):
    tags = [t for meta in _train_metas(collection) for t in raw_hashtags(meta)]
    assert any(t.startswith("#") and t[1:2].isupper() for t in tags)  # case variants
    assert any(t.lstrip("#").lower() in SYNONYMS for t in tags)  # synonym variants
    assert any(t.lstrip("#").lower() in ("love", "nofilter", "instagood") for t in tags)  # irrelevant tags
    metas = list(_train_metas(collection))
    no_shape = sum(1 for m in metas if not any(canonical(t, SYNONYMS) in
                                             ("circle", "square", "triangle", "star", "cross", "hexagon")
                                             for t in raw_hashtags(m)))
    assert 0.05 < no_shape / len(metas) < 0.5  # true tags dropped on some images, kept on most


def test_eval_labels_are_clean_and_cover_the_classes(collection):
    shard = os.path.join(collection, "eval-test-000000.tar")
    ix = build_index(shard)
    labels = []
    with open(shard, "rb") as f:
        for s in ix.samples:
            f.seek(s.meta[0])
            meta = json.loads(f.read(s.meta[1]))
            assert CLASSES[meta["label"]] == meta["class_name"]
            labels.append(meta["label"])
    assert len(set(labels)) >= 12 and len(labels) == 60


def test_vocab_canonicalises_and_filters(collection, tmp_path):
    out = str(tmp_path / "vocab.json")
    assert main(["data", "vocab", "--shards", os.path.join(collection, "train-*.tar"), "--min-count", "10",
                 "--synonyms", os.path.join(collection, "synonyms.json"), "--out", out]) == 0
    vocab = json.load(open(out))
    assert set(vocab) >= {"tags", "counts", "synonyms"}
    for t in vocab["tags"]:
        assert t == t.lower() and not t.startswith("#") and t not in SYNONYMS and vocab["counts"][t] >= 10
    assert {"red", "circle", "star"} <= set(vocab["tags"])
    # canonicalisation merges variants: counts with synonyms exceed the raw lower-case counts
    raw = build_vocab(expand_shards(os.path.join(collection, "train-*.tar")), min_count=1)
    assert vocab["counts"]["red"] > raw["counts"].get("red", 0)
    assert "crimson" in raw["tags"] and "crimson" not in vocab["tags"]
    assert canonical("#Crimson", load_synonyms(os.path.join(collection, "synonyms.json"))) == "red"


def test_indexer_matches_dalis_wds2idx(collection, tmp_path):
    import shutil
    import subprocess
    import sys

    tool = os.path.join(os.path.dirname(sys.executable), "wds2idx")
    if not os.path.exists(tool) or shutil.which("tar") is None:
        pytest.skip("DALI's wds2idx tool is not installed")
    shard = os.path.join(collection, "train-000001.tar")
    ref = str(tmp_path / "ref.idx")
    subprocess.run([tool, shard, ref], check=True, capture_output=True)
    ix = build_index(shard, validate=True)
    assert open(ix.index_path).read() == open(ref).read()
    assert [n for n, _, _ in tar_members(shard)][:2] == ["000000100.jpg", "000000100.json"]


def test_missing_shards_are_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="mawstron data synth --out DIR"):
        expand_shards(str(tmp_path / "nothing-*.tar"))
    with pytest.raises(ValueError, match="does not exist"):
        expand_shards(str(tmp_path / "a.tar"))
    with pytest.raises(ValueError, match="empty"):
        expand_shards("")
    assert main(["data", "vocab", "--shards", str(tmp_path / "x-*.tar"), "--out", str(tmp_path / "v.json")]) == 2


def test_brace_patterns_and_lists(collection):
    a = expand_shards(os.path.join(collection, "train-{000000..000002}.tar"))
    assert [os.path.basename(p) for p in a] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    b = expand_shards(",".join(a[:2]))
    assert b == a[:2]


def test_upright_scene_changes_the_pixels_not_the_draws():
    """`--scene upright` draws the same objects, tags and captions as `web` (only the #big/#small threshold moves),
    and draws them upright: a square fills its bounding box, where a freely rotated one leaves corners empty."""
    import numpy as np

    from mawstron.core.data.synth import render

    def without_size(meta):
        return [t for t in meta.get("hashtags", []) if t.lstrip("#").lower() not in ("big", "small")]

    for split in ("train", "eval-test"):
        for i in range(20):
            web_jpeg, web = make_sample(3, split, i, 48, 1.1, "web")
            up_jpeg, up = make_sample(3, split, i, 48, 1.1, "upright")
            assert web_jpeg != up_jpeg
            assert without_size(web) == without_size(up) and web.get("label") == up.get("label")

    def bbox_fill(scene, k):
        img, attrs = render(np.random.default_rng(k), 64, "square", "red", texture_p=[1.0, 0, 0, 0], scene=scene)
        px = np.asarray(img).astype(int)
        red = (px[..., 0] > 140) & (px[..., 1] < 110) & (px[..., 2] < 110)
        ys, xs = np.nonzero(red)
        return red.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))

    assert np.median([bbox_fill("upright", k) for k in range(9)]) > 0.9
    assert np.median([bbox_fill("web", k) for k in range(9)]) < 0.85


def test_scene_is_recorded_and_a_bad_one_is_refused(tmp_path):
    from mawstron.core.data.synth import synthesize

    m = synthesize(str(tmp_path / "up"), images=10, eval_images=0, size=32, scene="upright")
    assert m["scene"] == "upright"
    assert json.load(open(tmp_path / "up" / "manifest.json"))["scene"] == "upright"
    with pytest.raises(ValueError, match="--scene 'tilted'.*web, upright"):
        synthesize(str(tmp_path / "bad"), images=10, scene="tilted")
    assert not os.path.exists(tmp_path / "bad")
