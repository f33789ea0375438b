"""Shards from object storage (issue #20 item 3): s3:// (PyTorch loader and DALI) against moto's S3 server and
https-style URLs against http.server, both on 127.0.0.1, give the batches of the same shards on local disk; missing
objects are one line."""

import glob
import itertools
import os

import pytest
import torch

from data_helpers import make_collection
from mawstron.cli.main import main
from mawstron.core.data import DataConfig, build_train_loader, check_data

pytest.importorskip("s3fs")
pytest.importorskip("moto")

from storage_servers import http_server, s3_server  # noqa: E402


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("remote-src"))
    make_collection(out, images=32, shard_size=8, size=16, eval_images=0)
    assert main(["data", "vocab", "--shards", f"{out}/train-*.tar", "--min-count", "2", "--workers", "1",
                 "--out", f"{out}/vocab.json"]) == 0
    return out


def take(loader, n):
    return list(itertools.islice(iter(loader), n))


def batches(shards, vocab, index_dir, num_workers=0):
    cfg = DataConfig(source="shards", shards=shards, vocab=vocab, loader="torch", num_workers=num_workers,
                     index_dir=index_dir, resample="sqrt")
    return take(build_train_loader(cfg, stage="wsp", img_size=8, micro_batch=8, seed=2), 5)


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x["images"], y["images"]) and torch.equal(x["targets"], y["targets"])
                                    for x, y in zip(a, b))


def test_s3_shards_give_the_batches_of_local_shards(local, tmp_path, monkeypatch, capsys):
    """moto S3 on 127.0.0.1: brace and glob patterns, vocab, tag ids and batches as from disk; missing ones: one line."""
    vocab = f"{local}/vocab.json"
    reference = batches(f"{local}/train-*.tar", vocab, str(tmp_path / "ix-local"))
    with s3_server(monkeypatch) as endpoint:
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="web")
        for path in sorted(glob.glob(f"{local}/train-*.tar")):
            s3.upload_file(path, "web", f"ig/{os.path.basename(path)}")
        pattern = "s3://web/ig/train-{000000..000003}.tar"
        assert same(reference, batches(pattern, vocab, str(tmp_path / "ix-s3"), num_workers=1))
        assert same(reference, batches("s3://web/ig/train-*.tar", vocab, str(tmp_path / "ix-s3")))
        assert main(["data", "vocab", "--shards", pattern, "--min-count", "2", "--workers", "2",
                     "--out", str(tmp_path / "vocab-s3.json")]) == 0
        assert (tmp_path / "vocab-s3.json").read_bytes() == open(vocab, "rb").read()
        assert main(["data", "tags", "--shards", pattern, "--vocab", vocab, "--workers", "1"]) == 2
        assert "pass --index-dir" in capsys.readouterr().err
        assert main(["data", "tags", "--shards", pattern, "--vocab", vocab, "--workers", "1",
                     "--index-dir", str(tmp_path / "ix-s3")]) == 0
        cfg = DataConfig(source="shards", shards=pattern, vocab=vocab, loader="torch", num_workers=0,
                         index_dir=str(tmp_path / "ix-s3"), resample="sqrt")
        ld = build_train_loader(cfg, stage="wsp", img_size=8, micro_batch=8, seed=2)
        assert ld.shards.tag_ids_used == 4 and same(reference, take(ld, 5))
        with pytest.raises(ValueError, match=r"'s3://web/ig/train-000004.tar' does not exist .*hole in the brace"):
            check_data(DataConfig(source="shards", shards="s3://web/ig/train-{000000..000004}.tar"), "mae")
        # a rank does not list the store again (`mawstron train` checked it): a shard gone since is counted
        hole = DataConfig(source="shards", shards="s3://web/ig/train-{000000..000004}.tar", loader="torch",
                          num_workers=0, index_dir=str(tmp_path / "ix-s3"))
        ld = build_train_loader(hole, stage="mae", img_size=8, micro_batch=4)
        assert ld.stats()["skipped_by_reason"] == {"unreadable_shard": 1} and len(ld.shards.samples) == 32
        with pytest.raises(ValueError, match=r"s3://nobucket.*not found .*bucket"):
            check_data(DataConfig(source="shards", shards="s3://nobucket/ig/train-{000000..000001}.tar"), "mae")
        with pytest.raises(ValueError, match="no object matches"):
            check_data(DataConfig(source="shards", shards="s3://web/other/train-*.tar"), "mae")


def test_https_shards_give_the_batches_of_local_shards(local, tmp_path):
    """http.server with byte ranges on 127.0.0.1: the same batches as from disk; a hole or a dead host is one line."""
    vocab = f"{local}/vocab.json"
    reference = batches(f"{local}/train-*.tar", vocab, str(tmp_path / "ix-local"))
    with http_server(local) as url:
        assert same(reference, batches(f"{url}/train-{{000000..000003}}.tar", vocab, str(tmp_path / "ix-http"),
                                       num_workers=1))
        with pytest.raises(ValueError, match=r"train-000004.tar' does not exist \(1 of 5 .*hole in the brace range"):
            check_data(DataConfig(source="shards", shards=f"{url}/train-{{000000..000004}}.tar"), "mae")
        with pytest.raises(ValueError, match="brace pattern .* not a glob"):
            check_data(DataConfig(source="shards", shards=f"{url}/train-*.tar"), "mae")
    with pytest.raises(ValueError, match="cannot reach http:// storage"):
        check_data(DataConfig(source="shards", shards=f"{url}/train-{{000000..000001}}.tar"), "mae")


def test_dali_reads_s3_shards_as_local_shards(local, tmp_path, monkeypatch):
    """DALI's own S3 client against moto's server (a child process) on 127.0.0.1: the batches of the same shards
    on disk, plain and re-sampled (index files local under data.index_dir)."""
    vocab = f"{local}/vocab.json"

    def dali(shards, index_dir, **kw):
        cfg = DataConfig(source="shards", shards=shards, vocab=vocab, loader="dali", dali_device="cpu", num_workers=1,
                         index_dir=index_dir, **kw)
        return take(build_train_loader(cfg, stage="wsp", img_size=8, micro_batch=8, seed=2), 5)  # > one epoch

    reference = dali(f"{local}/train-*.tar", str(tmp_path / "ix-local"))
    resampled = dali(f"{local}/train-*.tar", str(tmp_path / "ix-local"), resample="sqrt")
    assert not same(reference, resampled)
    # DALI's S3 client keeps the AWS_ENDPOINT_URL of its first s3:// open for the life of the process: this is the
    # one test in the suite that reads s3:// through DALI
    with s3_server(monkeypatch, process=True) as endpoint:
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="web")
        for path in sorted(glob.glob(f"{local}/train-*.tar")):
            s3.upload_file(path, "web", f"ig/{os.path.basename(path)}")
        pattern = "s3://web/ig/train-{000000..000003}.tar"
        assert same(reference, dali(pattern, str(tmp_path / "ix-s3")))
        assert same(resampled, dali(pattern, str(tmp_path / "ix-s3"), resample="sqrt"))
