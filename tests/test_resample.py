"""Long-tailed synthetic hashtags and square-root re-sampling: the rule, the draw, and both loaders' streams."""

import itertools
import json
import os

import numpy as np
import pytest

from mawstron.cli.main import main
from mawstron.core.data import DataConfig, build_train_loader
from mawstron.core.data.resample import (EpochDraws, collection_tag_sets, image_weights, resample_power,
                                         tag_shares, target_shares)
from mawstron.core.data.shards import Vocab, expand_shards
from mawstron.core.data.synth import parse_tail, synthesize


def test_power_of_each_mode_and_bad_settings():
    assert resample_power("none") is None and resample_power("sqrt") == 0.5 and resample_power("inverse") == 0.0
    assert resample_power("sqrt", 0.3) == 0.3
    with pytest.raises(ValueError, match="data.resample=sqrt"):
        resample_power("none", 0.5)
    with pytest.raises(ValueError, match="must be one of"):
        DataConfig(resample="log")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        DataConfig(resample="sqrt", resample_power=2.0)
    with pytest.raises(ValueError, match="epoch_size"):
        DataConfig(epoch_size=-1)
    with pytest.raises(ValueError, match="min_crop_area"):
        DataConfig(min_crop_area=1.5)
    assert parse_tail("none") == 0.0 and parse_tail("zipf:1.1") == 1.1
    for bad in ("zipf", "zipf:0", "zipf:x", "pareto:1"):
        with pytest.raises(ValueError, match="zipf:S"):
            parse_tail(bad)


def test_single_tag_images_reach_the_target_exactly():
    counts = np.array([800.0, 150.0, 40.0, 10.0])
    tag_sets = [[t] for t, n in enumerate(counts) for _ in range(int(n))]
    for power in (0.5, 0.0, 0.25):
        shares = tag_shares(tag_sets, 4, image_weights(tag_sets, counts, power))
        np.testing.assert_allclose(shares, target_shares(counts, power), rtol=1e-9)
    # several tags: the factors add up (a tag drawn, then one of its images); no known tag: never drawn
    w = image_weights([[0, 3], [], [1]], counts, 0.5)
    np.testing.assert_allclose(w, [800 ** -0.5 + 10 ** -0.5, 0.0, 150 ** -0.5])


def test_draws_are_deterministic_weighted_and_with_replacement():
    w = np.array([1.0, 1.0, 8.0, 0.0])
    a = EpochDraws(w, epoch_size=5000, seed=3, rank=1)
    b = EpochDraws(w, epoch_size=5000, seed=3, rank=1)
    assert np.array_equal(a.epoch(2), b.epoch(2)) and not np.array_equal(a.epoch(0), a.epoch(1))
    assert a.sample_at(2 * 5000 + 17) == b.epoch(2)[17]
    assert not np.array_equal(a.epoch(0), EpochDraws(w, epoch_size=5000, seed=4, rank=1).epoch(0))
    freq = np.bincount(a.epoch(0), minlength=4) / 5000
    assert abs(freq[2] - 0.8) < 0.03 and freq[3] == 0
    assert a.fingerprint() == b.fingerprint() != EpochDraws(w, epoch_size=4999, seed=3, rank=1).fingerprint()


@pytest.fixture(scope="module")
def tailed(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tailed"))
    assert main(["data", "synth", "--out", out, "--images", "600", "--size", "16", "--eval-images", "45",
                 "--shard-size", "150", "--tail", "zipf:1.1"]) == 0
    assert main(["data", "vocab", "--shards", os.path.join(out, "train-*.tar"), "--min-count", "3",
                 "--synonyms", os.path.join(out, "synonyms.json"), "--out", os.path.join(out, "vocab.json")]) == 0
    return out


def test_long_tailed_collection_and_its_manifest(tailed):
    manifest = json.load(open(os.path.join(tailed, "manifest.json")))
    tail = manifest["tail"]
    assert tail["law"] == "zipf" and tail["exponent"] == 1.1 and len(tail["train"]["shape"]["values"]) == 12
    assert tail["head_classes"] and tail["tail_classes"]
    counts = json.load(open(os.path.join(tailed, "vocab.json")))["counts"]
    shapes = tail["train"]["shape"]["values"]
    # head and tail: the first shape on many more images than the last ones
    assert counts["circle"] > 5 * max(counts.get(s, 0) for s in shapes[-3:])
    # evaluation splits stay class-balanced: 45 images, 15 classes, 3 each
    labels = []
    import tarfile
    with tarfile.open(os.path.join(tailed, "eval-test-000000.tar")) as tar:
        for m in tar.getmembers():
            if m.name.endswith(".json"):
                labels.append(json.load(tar.extractfile(m))["label"])
    assert np.bincount(labels).tolist() == [3] * 15


def test_stats_prints_and_plots_both_distributions(tailed, tmp_path, capsys):
    plot, report = tmp_path / "dist.png", tmp_path / "dist.json"
    assert main(["data", "stats", "--shards", os.path.join(tailed, "train-*.tar"), "--vocab",
                 os.path.join(tailed, "vocab.json"), "--plot", str(plot), "--json", str(report)]) == 0
    assert "natural" in capsys.readouterr().out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.load(open(report))["tags"]
    assert rows[0]["resampled_share"] < rows[0]["natural_share"]  # the head tag loses share
    assert rows[-1]["resampled_share"] > rows[-1]["natural_share"]  # the tail tag gains
    assert main(["data", "stats", "--shards", os.path.join(tailed, "nothing-*.tar"), "--vocab",
                 os.path.join(tailed, "vocab.json")]) == 2


def _tail_share(targets: np.ndarray, tail: np.ndarray) -> float:
    occurrences = targets.sum(0)
    return float(occurrences[tail].sum() / occurrences.sum())


@pytest.mark.parametrize("loader", ["dali", "torch"])
def test_sqrt_resampling_raises_the_tail_share_toward_the_target(tailed, loader):
    """Done-when: over a few thousand samples the stream's tail tags' share rises from its natural value toward
    the square-root target, as the rule predicts."""
    vocab = Vocab(os.path.join(tailed, "vocab.json"))
    counts = vocab.counts()
    tail = np.argsort(-counts)[len(counts) // 2:]  # the rarer half of the tags
    tag_sets = collection_tag_sets(expand_shards(os.path.join(tailed, "train-*.tar")), vocab)
    natural = tag_shares(tag_sets, len(vocab))[tail].sum()
    expected = tag_shares(tag_sets, len(vocab), image_weights(tag_sets, counts, 0.5))[tail].sum()
    target = target_shares(counts, 0.5)[tail].sum()
    assert natural < expected < target
    cfg = DataConfig(source="shards", shards=os.path.join(tailed, "train-*.tar"), vocab=vocab.path, loader=loader,
                     num_workers=1, resample="sqrt", epoch_size=1000)
    ld = build_train_loader(cfg, stage="wsp", img_size=16, micro_batch=100, seed=1)
    targets = np.concatenate([b["targets"].numpy() for b in itertools.islice(iter(ld), 30)])  # 3000 samples
    measured = _tail_share(targets, tail)
    print(f"{loader}: tail share natural {natural:.4f} measured {measured:.4f} expected {expected:.4f} "
          f"target {target:.4f}")
    assert measured > natural + 0.6 * (expected - natural), (natural, measured, expected, target)
    assert abs(measured - expected) < 0.35 * (expected - natural) + 0.01
    ld.close()


@pytest.mark.parametrize("loader", ["dali", "torch"])
def test_resampled_stream_resumes_exactly(tailed, loader):
    cfg = DataConfig(source="shards", shards=os.path.join(tailed, "train-*.tar"),
                     vocab=os.path.join(tailed, "vocab.json"), loader=loader, num_workers=1, resample="sqrt",
                     epoch_size=40)
    kw = dict(stage="wsp", img_size=16, micro_batch=16, seed=2)
    full = list(itertools.islice(iter(build_train_loader(cfg, **kw)), 6))  # crosses re-sampled epochs
    a = build_train_loader(cfg, **kw)
    list(itertools.islice(iter(a), 3))
    state = json.loads(json.dumps(a.state_dict()))
    b = build_train_loader(cfg, **kw)
    b.load_state_dict(state)
    rest = list(itertools.islice(iter(b), 3))
    for x, y in zip(full[3:], rest):
        assert np.array_equal(x["images"].numpy(), y["images"].numpy())
        assert np.array_equal(x["targets"].numpy(), y["targets"].numpy())
    other = DataConfig(**{**cfg.__dict__, "resample": "inverse"})
    with pytest.raises(ValueError, match="data.resample"):
        build_train_loader(other, **kw).load_state_dict(state)
