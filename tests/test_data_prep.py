"""Data preparation at scale (issue #20): bounded open files, precomputed tag ids, the local and Ray engines."""

import bisect
import itertools
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from data_helpers import make_collection, tiny_jpeg, write_shard
from mawstron.cli.main import main
from mawstron.core.data import DataConfig, build_train_loader
from mawstron.core.data.shards import build_index

HERE = os.path.dirname(os.path.abspath(__file__))


def take(loader, n):
    return list(itertools.islice(iter(loader), n))


def test_a_rank_with_3x_more_shards_than_its_file_limit_reads_every_sample(tmp_path):
    """ulimit -n 48, 144 shards of 2 samples: the PyTorch reader keeps at most 16 open and reads all 288."""
    limit, shards = 48, 144
    for k in range(shards):
        write_shard(str(tmp_path / f"train-{k:06d}.tar"),
                    [(f"{k:04d}{j}.{ext}", tiny_jpeg(k * 2 + j, 8) if ext == "jpg" else b'{"hashtags": ["a"]}')
                     for j in range(2) for ext in ("jpg", "json")])
    script = textwrap.dedent(f"""
        import json, resource, sys
        from mawstron.core.data import DataConfig, build_train_loader
        resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        held = []
        try:  # the limit is real: holding every shard open at once fails
            held = [open(f"{tmp_path}/train-{{k:06d}}.tar", "rb") for k in range({shards})]
            sys.exit("the file limit did not bite")
        except OSError:
            pass
        finally:
            for f in held:
                f.close()
        cfg = DataConfig(source="shards", shards="{tmp_path}/train-*.tar", loader="torch", num_workers=0,
                         max_open_shards=16)
        ld = build_train_loader(cfg, stage="mae", img_size=8, micro_batch=16)
        n = len(ld.shards.samples)
        it = iter(ld)
        for _ in range(n // 16):  # one epoch: every sample once
            next(it)
        print(json.dumps({{"n": n, "seen": ld.stats()["images_seen"], "skips": ld.stats()["skipped"],
                          "runtime_skips": len(ld.runtime_skips)}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"n": 2 * shards, "seen": 2 * shards, "skips": 0, "runtime_skips": 0}


def test_open_file_errors_are_errors_not_decode_errors(tmp_path):
    """A shard that disappears after indexing stops the loader with its name; it is not skipped as decode errors."""
    make_collection(str(tmp_path), images=16, shard_size=8, size=16, eval_images=0)
    cfg = DataConfig(source="shards", shards=str(tmp_path / "train-*.tar"), loader="torch", num_workers=0)
    ld = build_train_loader(cfg, stage="mae", img_size=8, micro_batch=4)
    os.remove(tmp_path / "train-000001.tar")
    with pytest.raises(OSError, match="cannot open shard .*train-000001.tar"):
        take(ld, 4)


@pytest.fixture(scope="module")
def tailed(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tailed"))
    make_collection(out, images=96, shard_size=12, size=16, eval_images=0)
    assert main(["data", "vocab", "--shards", f"{out}/train-*.tar", "--min-count", "2", "--workers", "1",
                 "--synonyms", f"{out}/synonyms.json", "--out", f"{out}/vocab.json"]) == 0
    return out


@pytest.mark.parametrize("loader", ["torch", "dali"])
def test_precomputed_tag_ids_give_the_same_draws_and_resume(tailed, tmp_path, loader):
    """data tags writes one file per shard; a rank reads them instead of every sample, with identical draws."""
    index_dir = str(tmp_path / ("idx-" + loader))
    cfg = DataConfig(source="shards", shards=f"{tailed}/train-*.tar", vocab=f"{tailed}/vocab.json", loader=loader,
                     num_workers=1, resample="sqrt", index_dir=index_dir, dali_device="cpu")
    kw = dict(stage="wsp", img_size=8, micro_batch=6, seed=5, rank=1, world_size=2)
    slow = build_train_loader(cfg, **kw)
    assert slow.shards.tag_ids_used == 0
    reference = take(slow, 3)
    state = json.loads(json.dumps(slow.state_dict()))
    assert main(["data", "tags", "--shards", f"{tailed}/train-*.tar", "--vocab", f"{tailed}/vocab.json",
                 "--index-dir", index_dir, "--workers", "2"]) == 0
    fast = build_train_loader(cfg, **kw)
    assert fast.shards.tag_ids_used == len(fast.shards.usable) == 4
    assert fast.draws.fingerprint() == slow.draws.fingerprint()
    assert (fast.draws.epoch(0) == slow.draws.epoch(0)).all() and (fast.draws.epoch(3) == slow.draws.epoch(3)).all()
    again = take(fast, 3)
    for a, b in zip(reference, again):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["targets"], b["targets"])
    resumed = build_train_loader(cfg, **kw)
    resumed.load_state_dict(state)  # a checkpoint of the slow start resumes on the fast one
    full = take(build_train_loader(cfg, **kw), 5)
    for a, b in zip(full[3:], take(resumed, 2)):
        assert torch.equal(a["images"], b["images"])


def test_tag_ids_serve_ranks_splitting_one_shard_and_step_aside_for_another_sample_list(tailed, tmp_path):
    """Two ranks splitting one shard draw the same with tag ids; a file over another sample list is not used."""
    one, index_dir = f"{tailed}/train-000000.tar", str(tmp_path / "idx")
    cfg = DataConfig(source="shards", shards=one, vocab=f"{tailed}/vocab.json", loader="torch", num_workers=0,
                     resample="sqrt", index_dir=index_dir)

    def draws():
        loaders = [build_train_loader(cfg, stage="wsp", img_size=8, micro_batch=2, seed=1, rank=r, world_size=2)
                   for r in range(2)]
        return [ld.draws.fingerprint() for ld in loaders], [ld.shards.tag_ids_used for ld in loaders]

    slow, used = draws()
    assert used == [0, 0] and slow[0] != slow[1]
    assert main(["data", "tags", "--shards", one, "--vocab", f"{tailed}/vocab.json", "--index-dir", index_dir,
                 "--workers", "1"]) == 0
    assert draws() == (slow, [1, 1])
    (path,) = [os.path.join(index_dir, n) for n in os.listdir(index_dir) if n.endswith(".tags.json")]
    data = json.load(open(path))
    json.dump({**data, "keys": "written over another sample list"}, open(path, "w"))
    build_index(one, index_dir=index_dir, force=True)  # an index rebuilt since the file was written: read at start
    assert draws() == (slow, [0, 0])


def test_rank_start_with_tag_ids_reads_a_shard_index_only_when_the_shard_is_read(tailed, tmp_path):
    """With tag ids a rank starts without reading any sample index and reads a shard's when it first reads that
    shard (same batches); an index rebuilt since is read at start; one that no longer matches is refused."""
    index_dir = str(tmp_path / "idx")
    cfg = DataConfig(source="shards", shards=f"{tailed}/train-*.tar", vocab=f"{tailed}/vocab.json", loader="torch",
                     num_workers=0, resample="sqrt", index_dir=index_dir)
    kw = dict(stage="wsp", img_size=8, micro_batch=2, seed=3)
    slow = build_train_loader(cfg, **kw)
    reference = take(slow, 1)
    assert main(["data", "tags", "--shards", f"{tailed}/train-*.tar", "--vocab", f"{tailed}/vocab.json",
                 "--index-dir", index_dir, "--workers", "1"]) == 0
    fast = build_train_loader(cfg, **kw)
    usable = fast.shards.usable
    assert fast.shards.tag_ids_used == len(usable) == 8 and not any(ix.loaded for ix in usable)
    assert fast.draws.fingerprint() == slow.draws.fingerprint() and len(fast.shards.samples) == 96
    assert fast.stats()["skipped"] == slow.stats()["skipped"]
    (batch,) = take(fast, 1)
    assert torch.equal(batch["images"], reference[0]["images"])
    assert torch.equal(batch["targets"], reference[0]["targets"])
    drawn = {bisect.bisect_right(fast.shards.samples.ends, fast.draws.sample_at(p)) for p in range(2)}
    assert {k for k, ix in enumerate(usable) if ix.loaded} == drawn  # only the shards the batch read

    shards = [ix.path for ix in usable]
    build_index(shards[0], index_dir=index_dir, force=True)  # rebuilt: read at start, its tag ids still serve
    again = build_train_loader(cfg, **kw)
    assert [getattr(ix, "loaded", "read at start") for ix in again.shards.usable[:2]] == ["read at start", False]
    assert again.shards.tag_ids_used == 8 and again.draws.fingerprint() == slow.draws.fingerprint()
    tags = again.shards.usable[1].tags_path
    json.dump({**json.load(open(tags)), "keys": "another sample list"}, open(tags, "w"))
    odd = build_train_loader(cfg, **kw).shards.usable[1]
    with pytest.raises(ValueError, match=r"tags\.json was written over another sample list .*data tags"):
        odd.samples


def test_tag_ids_of_an_older_vocabulary_are_refused(tailed, tmp_path):
    """Tag ids written for another vocabulary are refused at rank start, naming the file and the command."""
    index_dir = str(tmp_path / "idx")
    assert main(["data", "tags", "--shards", f"{tailed}/train-*.tar", "--vocab", f"{tailed}/vocab.json",
                 "--index-dir", index_dir, "--workers", "1"]) == 0
    newer = str(tmp_path / "vocab-newer.json")
    assert main(["data", "vocab", "--shards", f"{tailed}/train-*.tar", "--min-count", "4", "--workers", "1",
                 "--out", newer]) == 0
    cfg = DataConfig(source="shards", shards=f"{tailed}/train-*.tar", vocab=newer, loader="torch", num_workers=0,
                     resample="sqrt", index_dir=index_dir)
    with pytest.raises(ValueError, match=r"tags\.json holds tag ids of another \(older\) vocabulary .*data tags"):
        build_train_loader(cfg, stage="wsp", img_size=8, micro_batch=2)


def test_local_engine_and_ray_give_the_same_outputs(tailed, tmp_path, capsys):
    """vocab.json is byte-identical for 1 process, 2 processes and Ray; index, tags and stats agree across engines."""
    ray = pytest.importorskip("ray")
    shards = f"{tailed}/train-*.tar"
    common = ["--shards", shards, "--min-count", "2", "--synonyms", f"{tailed}/synonyms.json"]
    assert main(["data", "vocab", *common, "--workers", "1", "--out", str(tmp_path / "v1.json")]) == 0
    assert main(["data", "vocab", *common, "--workers", "2", "--out", str(tmp_path / "v2.json")]) == 0
    assert main(["data", "stats", "--shards", shards, "--vocab", f"{tailed}/vocab.json", "--workers", "2",
                 "--json", str(tmp_path / "s-local.json")]) == 0
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # one short local Ray for every job below
    try:
        assert main(["data", "vocab", *common, "--engine", "ray", "--out", str(tmp_path / "vr.json")]) == 0
        assert main(["data", "index", "--shards", shards, "--engine", "ray", "--index-dir", str(tmp_path / "ir")]) == 0
        assert main(["data", "tags", "--shards", shards, "--vocab", f"{tailed}/vocab.json", "--engine", "ray",
                     "--index-dir", str(tmp_path / "tr")]) == 0
        assert main(["data", "stats", "--shards", shards, "--vocab", f"{tailed}/vocab.json", "--engine", "ray",
                     "--json", str(tmp_path / "s-ray.json")]) == 0
    finally:
        ray.shutdown()
    v1 = (tmp_path / "v1.json").read_bytes()
    assert v1 == (tmp_path / "v2.json").read_bytes() == (tmp_path / "vr.json").read_bytes()
    assert v1 == open(f"{tailed}/vocab.json", "rb").read()
    local, remote = (json.load(open(tmp_path / f"s-{k}.json")) for k in ("local", "ray"))
    assert local["tags"] == remote["tags"] and local["images"] == remote["images"] == 96
    cfg = DataConfig(source="shards", shards=shards, vocab=f"{tailed}/vocab.json", loader="torch", num_workers=0,
                     resample="sqrt", index_dir=str(tmp_path / "tr"))
    ld = build_train_loader(cfg, stage="wsp", img_size=8, micro_batch=2)
    assert ld.shards.tag_ids_used == 8  # the files Ray's workers wrote serve a rank
    assert main(["data", "vocab", *common, "--engine", "ray", "--ray-address", "127.0.0.1:1",
                 "--out", str(tmp_path / "vx.json")]) == 2
    assert "no Ray cluster answers" in capsys.readouterr().err and not (tmp_path / "vx.json").exists()


def test_from_folder_writes_the_same_shards_on_any_worker_count(tmp_path):
    """data from-folder with 1 and 2 processes writes byte-identical shards and indexes."""
    from folder_helpers import make_image_folder

    make_image_folder(str(tmp_path / "src"), images=18, size=16)
    for workers in (1, 2):
        assert main(["data", "from-folder", str(tmp_path / "src"), "--out", str(tmp_path / f"out{workers}"),
                     "--shard-size", "5", "--workers", str(workers)]) == 0
    names = sorted(n for n in os.listdir(tmp_path / "out1") if n.endswith((".tar", ".idx")))
    assert len([n for n in names if n.endswith(".tar")]) == 4
    assert names == sorted(n for n in os.listdir(tmp_path / "out2") if n.endswith((".tar", ".idx")))
    for name in names:
        assert (tmp_path / "out1" / name).read_bytes() == (tmp_path / "out2" / name).read_bytes()


def test_progress_reports_images_per_second_on_a_terminal_only():
    """Data jobs print shards done and images/s to a terminal, and nothing to a pipe or a log file."""
    import io

    from mawstron.core.data.jobs import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty, pipe = Terminal(), io.StringIO()
    for stream in (tty, pipe):
        progress = Progress("vocab", 2, stream=stream)
        progress.update((None, None, 30))
        progress.update({"samples": 12})
    assert "vocab: 2/2 shards, 42 images" in tty.getvalue() and "images/s" in tty.getvalue()
    assert pipe.getvalue() == ""
