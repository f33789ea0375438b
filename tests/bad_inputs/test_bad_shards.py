"""Hostile or broken shards (issue #21 items 3, 4 and 7): each is skipped and counted, never fatal or mis-indexed."""

import json
import os
import stat
import tempfile

from data_helpers import tiny_jpeg, write_shard
from mawstron.core.data import DataConfig, build_train_loader, shards as shards_mod, storage
from mawstron.core.data.shards import build_index, build_vocab, parse_meta


def _sample(key, seed, meta: bytes | None = None):
    return [(f"{key}.jpg", tiny_jpeg(seed)),
            (f"{key}.json", meta if meta is not None else json.dumps({"hashtags": ["red", f"t{seed % 2}"]}).encode())]


def test_deeply_nested_json_is_a_skipped_sample(tmp_path):
    """A sample whose JSON nests 100,000 deep (RecursionError in the parser) is counted as bad_json; the rest reads."""
    deep = b"[" * 100_000 + b"]" * 100_000
    members = _sample("000", 0) + _sample("001", 1, meta=deep) + _sample("002", 2) + _sample("003", 3)
    shard = write_shard(str(tmp_path / "train-000000.tar"), members)
    ix = build_index(shard, validate=True)
    assert [s.key for s in ix.samples] == ["000", "002", "003"] and ix.skipped == {"bad_json": 1}
    assert parse_meta(deep, "json") == {}  # a reader given the raw bytes directly is not taken down either
    vocab = build_vocab([shard], min_count=1)
    assert vocab["counts"]["red"] == 3 and vocab["images_skipped"] == {"bad_json": 1}
    json.dump(vocab, open(tmp_path / "vocab.json", "w"))
    cfg = DataConfig(source="shards", shards=shard, loader="torch", num_workers=0, vocab=str(tmp_path / "vocab.json"),
                     resample="sqrt")
    ld = build_train_loader(cfg, stage="wsp", img_size=8, micro_batch=3)
    batch = next(iter(ld))
    assert batch["images"].shape == (3, 3, 8, 8) and ld.stats()["skipped_by_reason"]["bad_json"] == 1


def test_member_names_with_whitespace_are_skipped_not_misindexed(tmp_path):
    """Keys with a space, a newline or a tab are counted as bad_name; every .idx line stays one well-formed sample."""
    members = (_sample("000", 0) + _sample("a b", 1) + _sample("new\nline", 2) + _sample("tab\tkey", 3)
               + _sample("001", 4))
    shard = write_shard(str(tmp_path / "train-000000.tar"), members)
    ix = build_index(shard, validate=True)
    assert [s.key for s in ix.samples] == ["000", "001"] and ix.skipped == {"bad_name": 3}
    lines = open(ix.index_path).read().split("\n")
    assert lines[0] == "v1.2 2" and lines[-1] == "" and len(lines) == 4
    for line in lines[1:3]:  # DALI's wds2idx v1.2: ext offset size name, per component
        fields = line.split(" ")
        assert len(fields) == 8 and fields[3] in ("000.jpg", "001.jpg") and fields[7] in ("000.json", "001.json")
    assert build_vocab([shard])["images_skipped"] == {"bad_name": 3}


def test_index_and_resample_folders_are_private_and_removed(tmp_path, monkeypatch):
    """A pre-planted /tmp/mawstron-index (another user's forged index) is never read; temp folders are 0700, removed."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setattr(storage, "_PRIVATE", {})
    data = tmp_path / "data"
    shard = write_shard(str(data / "train-000000.tar"), sum((_sample(f"{i:03d}", i) for i in range(6)), []))
    json.dump(build_vocab([shard]), open(tmp_path / "vocab.json", "w"))
    # the data folder is read-only (as a shared collection is): writes beside the shards fail
    real_write = shards_mod._write_atomic

    def read_only_data(path, text):
        if os.path.abspath(path).startswith(str(data)):
            raise PermissionError(13, "Read-only file system", path)
        real_write(path, text)

    monkeypatch.setattr(shards_mod, "_write_atomic", read_only_data)
    # another user got there first: the old fixed folder holds a forged index of this shard (right stamp, one sample)
    planted = tmp / "mawstron-index"
    planted.mkdir()
    forged = shards_mod.index_path_for(shard, str(planted))
    open(forged, "w").write("v1.2 1\n")
    st = os.stat(shard)
    json.dump({"version": shards_mod.SIDECAR_VERSION, "stamp": [st.st_size, st.st_mtime_ns], "validated": True,
               "skipped": {}, "samples": [["000", [512, 10], "json", [1024, 10]]]}, open(forged + ".json", "w"))
    ix = build_index(shard, validate=True)
    private = os.path.dirname(ix.index_path)
    assert len(ix.samples) == 6 and private != str(planted)
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o700
    cfg = DataConfig(source="shards", shards=shard, loader="dali", dali_device="cpu", num_workers=1,
                     vocab=str(tmp_path / "vocab.json"), resample="sqrt", shuffle_buffer=0)
    ld = build_train_loader(cfg, stage="wsp", img_size=8, micro_batch=2)
    assert next(iter(ld))["images"].shape == (2, 3, 8, 8)
    ld.close()
    assert not (tmp / "mawstron-resample").exists()
    made = sorted(p.name.rsplit("-", 1)[0] for p in tmp.iterdir() if p.name != "mawstron-index")
    assert made == ["mawstron-index", "mawstron-resample"]  # mkdtemp: mawstron-index-XXXX, mawstron-resample-XXXX
    storage.remove_private_dirs()  # what runs at exit
    assert [p.name for p in tmp.iterdir()] == ["mawstron-index"]
