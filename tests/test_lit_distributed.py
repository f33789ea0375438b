"""Stage lit on two CPU ranks through the real deepspeed launcher: the locked image tower stays as loaded, the
text tower learns, resume mid-run reproduces the uninterrupted losses, consolidation writes the MAWS-CLIP layout,
and zero-shot evaluation reads both the ZeRO-3 folder and the consolidated file."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from distributed_runs import read_metrics, run
from mawstron.core import create_vit
from mawstron.parallel.checkpoints.consolidate import consolidate
from mawstron.parallel.checkpoints.store import read_zero_checkpoint

pytestmark = pytest.mark.multirank

STEPS = 4
TINY_LIT = ["model.preset=vit_micro", "train.micro_batch=8", "train.log_every=1", f"train.steps={STEPS}",
            "checkpoint.every_steps=2", "checkpoint.keep_last=2", "optim.warmup_steps=1", "optim.lr=2e-3",
            "lit.vocab_size=200", "lit.text_width=32", "lit.text_depth=1", "lit.text_heads=2", "lit.context_length=16",
            "lit.embed_dim=16", "data.loader=torch", "data.num_workers=0", "parallel.precision=fp32"]


@pytest.fixture(scope="module")
def lit_data(tmp_path_factory):
    """Captioned shards (2 x 64 images), labelled eval splits, and a frozen vit_micro encoder file."""
    root = str(tmp_path_factory.mktemp("lit"))
    data = os.path.join(root, "data")
    exe = os.path.join(os.path.dirname(sys.executable), "mawstron")
    subprocess.run([exe, "data", "synth", "--out", data, "--images", "128", "--size", "32", "--shard-size", "64",
                    "--eval-images", "30"], check=True, capture_output=True, timeout=120)
    torch.manual_seed(3)
    encoder = create_vit("vit_micro")
    path = os.path.join(root, "encoder.safetensors")
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, path,
              metadata={"format": "timm", "preset": "vit_micro", "model": json.dumps({"preset": "vit_micro"})})
    return root, data, path


def overrides(run_dir, data, encoder):
    return TINY_LIT + [f"output_dir={run_dir}", f"data.shards={data}/train-*.tar", f"checkpoint.init_from={encoder}"]


@pytest.fixture(scope="module")
def lit_run(lit_data):
    root, data, encoder = lit_data
    run_dir = os.path.join(root, "lit_full")
    out = run("vit_tiny_lit.py", overrides(run_dir, data, encoder), cwd=root)
    assert out.returncode == 0, out.stdout[-4000:]
    return run_dir


def test_locked_image_tower_is_unchanged_and_the_text_tower_learns(lit_data, lit_run):
    _, _, encoder = lit_data
    state = read_zero_checkpoint(os.path.join(lit_run, "checkpoints"))
    loaded = load_file(encoder)
    vision = {k[len("vision_encoder."):]: v for k, v in state.items() if k.startswith("vision_encoder.")}
    assert vision.keys() == loaded.keys()
    for k, v in loaded.items():
        torch.testing.assert_close(vision[k], v, rtol=0, atol=0, msg=k)  # locked: bit-identical after 4 steps
    assert os.path.isfile(os.path.join(lit_run, "checkpoints", "tokenizer.json"))
    records = read_metrics(lit_run)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert all(r["loss"] == r["loss"] for r in records) and records[-1]["loss"] < records[0]["loss"]
    # ZeRO-3: each rank holds about half of every parameter, the frozen tower included
    ranks = json.load(open(os.path.join(lit_run, "zero_partition.json")))["ranks"]
    assert all(r["local_params"] < 0.6 * r["total_params"] for r in ranks)


def test_resume_mid_lit_reproduces_the_uninterrupted_losses(lit_data, lit_run):
    root, data, encoder = lit_data
    resumed = os.path.join(root, "lit_resumed")
    shutil.copytree(os.path.join(lit_run, "checkpoints"), os.path.join(resumed, "checkpoints"))
    shutil.rmtree(os.path.join(resumed, "checkpoints", "step_00000004"))
    with open(os.path.join(resumed, "checkpoints", "latest"), "w") as f:
        f.write("step_00000002")
    out = run("vit_tiny_lit.py", overrides(resumed, data, encoder), cwd=root, extra=["--resume"])
    assert out.returncode == 0, out.stdout[-4000:]
    assert "resumed from" in out.stdout and "at step 2" in out.stdout
    full = {r["step"]: r["loss"] for r in read_metrics(lit_run)}
    again = {r["step"]: r["loss"] for r in read_metrics(resumed)}
    assert sorted(again) == [3, 4]
    for step in (3, 4):
        assert again[step] == pytest.approx(full[step], rel=1e-5)


def test_consolidated_maws_clip_file_and_zero_shot_eval(lit_data, lit_run):
    root, data, _ = lit_data
    out_path = os.path.join(root, "tiny_clip.safetensors")
    info = consolidate(os.path.join(lit_run, "checkpoints"), out_path)
    assert info["tokenizer"] == os.path.join(root, "tiny_clip.tokenizer.json") and os.path.isfile(info["tokenizer"])
    keys = set(load_file(out_path))
    assert {"vision_projection", "text_projection", "logit_scale", "vision_encoder.cls_token",
            "text_encoder.encoder.transformer.token_embedding.weight",
            "text_encoder.encoder.transformer.layers.0.attention.input_projection.weight"} <= keys
    assert not any(k.startswith("text_encoder.embeddings.") for k in keys)
    exe = os.path.join(os.path.dirname(sys.executable), "mawstron")
    results = []
    for checkpoint in (lit_run, out_path):  # the run folder stands for its checkpoints/
        proc = subprocess.run([exe, "eval", "--zero-shot", "--checkpoint", checkpoint, "--data", data, "--json"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = proc.stdout.strip().splitlines()
        assert len(lines) == 1
        results.append(json.loads(lines[0]))
    assert results[0]["num_classes"] == 15 and results[0]["test_images"] == 30
    for key in ("zero_shot_top1", "zero_shot_top5"):
        assert 0.0 <= results[0][key] <= 1.0
        assert results[0][key] == pytest.approx(results[1][key])  # same model either way
    assert results[0]["zero_shot_top5"] >= results[0]["zero_shot_top1"]


def test_unlocked_image_tower_trains(lit_data):
    root, data, encoder = lit_data
    run_dir = os.path.join(root, "lit_unlocked")
    out = run("vit_tiny_lit.py", overrides(run_dir, data, encoder)
              + ["train.steps=1", "lit.unlock_image=true", "lit.image_lr_scale=0.1"], cwd=root)
    assert out.returncode == 0, out.stdout[-4000:]
    state = read_zero_checkpoint(os.path.join(run_dir, "checkpoints"))
    loaded = load_file(encoder)
    assert not torch.equal(state["vision_encoder.blocks.0.attn.qkv.weight"], loaded["blocks.0.attn.qkv.weight"])
