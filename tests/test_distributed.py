"""Two CPU ranks through the real deepspeed launcher: ZeRO-3 sharding, learning, kill + resume, the MAE -> WSP
handoff, consolidation, divergence, bad overrides.

The runs are session-scoped and shared between assertions because each launch costs ~15 s here (the first one
of a fresh machine also JIT-builds DeepSpeed's C++ ops).
"""

import glob
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from distributed_runs import read_metrics, run, run_and_kill_after
from mawstron.core import create_vit, load_pretrained
from mawstron.parallel.checkpoints.consolidate import consolidate
from mawstron.parallel.checkpoints.store import read_zero_checkpoint
from mawstron.parallel.planning.plan import model_shape_stats, model_state_bytes

pytestmark = pytest.mark.multirank

TINY = ["model.preset=vit_micro", "train.micro_batch=8", "mae.decoder_embed_dim=32", "mae.decoder_depth=1",
        "mae.decoder_num_heads=2", "train.log_every=1"]
MAE_STEPS = 16


def mae_overrides(run_dir, steps=MAE_STEPS):
    return TINY + [f"output_dir={run_dir}", f"train.steps={steps}", "checkpoint.every_steps=4",
                   "checkpoint.keep_last=2", "optim.warmup_steps=4", "optim.lr=3e-3"]


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("distributed"))


@pytest.fixture(scope="session")
def mae_run(workdir):
    """An uninterrupted tiny MAE run: 16 steps, a checkpoint every 4."""
    run_dir = os.path.join(workdir, "mae_full")
    out = run("vit_tiny_mae.py", mae_overrides(run_dir), cwd=workdir)
    assert out.returncode == 0, out.stdout[-4000:]
    return run_dir


@pytest.fixture(scope="session")
def resumed_run(workdir, mae_run):
    """The same run killed (SIGKILL, whole process group) right after its step-4 checkpoint, then resumed."""
    run_dir = os.path.join(workdir, "mae_killed")
    marker = os.path.join(run_dir, "checkpoints", "latest")  # replaced atomically, first after step 4
    shm_before = shm_buffers()
    run_and_kill_after("vit_tiny_mae.py", mae_overrides(run_dir), cwd=workdir, marker=marker)
    killed_at = read_metrics(run_dir)[-1]["step"]
    out = run("vit_tiny_mae.py", mae_overrides(run_dir), cwd=workdir, extra=["--resume"])
    assert out.returncode == 0, out.stdout[-4000:]
    return run_dir, killed_at, out.stdout, shm_buffers() - shm_before


def shm_buffers() -> set[str]:
    return set(glob.glob("/dev/shm/deepspeed_allreduce_buffer_*"))


def test_zero3_shards_parameters_across_ranks(mae_run):
    report = json.load(open(os.path.join(mae_run, "zero_partition.json")))
    assert report["zero_stage"] == 3 and len(report["ranks"]) == 2
    total = report["ranks"][0]["total_params"]
    for r in report["ranks"]:
        assert r["total_params"] == total
        assert abs(r["local_params"] / total - 0.5) < 0.02, r  # each rank holds about half
    assert sum(r["local_params"] for r in report["ranks"]) >= total


def test_planner_model_states_match_measured_partitions(mae_run):
    report = json.load(open(os.path.join(mae_run, "zero_partition.json")))
    from mawstron.core import MAEConfig

    total, trainable, largest = model_shape_stats(
        "vit_micro", "mae", MAEConfig(decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2))
    assert total == report["ranks"][0]["total_params"]
    planned = model_state_bytes(total, largest, gpus=2, trainable_params=trainable)
    for r in report["ranks"]:
        assert r["param_bytes"] == pytest.approx(planned["params"], rel=0.01)
        assert r["master_weight_bytes"] + r["optimizer_state_bytes"] == pytest.approx(planned["optimizer"], rel=0.01)
        assert r["grad_bytes"] <= planned["grads"]  # DeepSpeed books 4 B/param; the persistent partition is 2


def test_tiny_mae_loss_falls(mae_run):
    losses = [m["loss"] for m in read_metrics(mae_run)]
    assert len(losses) == MAE_STEPS
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    record = read_metrics(mae_run)[-1]
    for key in ("lr", "grad_norm", "images_per_s", "tflops_per_device", "peak_mem_gib", "data_wait_share"):
        assert record[key] is not None and record[key] == record[key], key  # present and not NaN
    assert record["mfu"] is None  # MFU is not meaningful on a CPU


def test_checkpoints_are_complete_and_pruned(mae_run):
    ckpt_dir = os.path.join(mae_run, "checkpoints")
    assert open(os.path.join(ckpt_dir, "latest")).read().strip() == "step_00000016"
    tags = sorted(t for t in os.listdir(ckpt_dir) if t.startswith("step_"))
    assert tags == ["step_00000012", "step_00000016"]  # keep_last=2
    assert all(os.path.isfile(os.path.join(ckpt_dir, t, "COMPLETE")) for t in tags)


def test_resume_after_kill_reproduces_the_uninterrupted_losses(mae_run, resumed_run):
    run_dir, killed_at, stdout, _ = resumed_run
    assert killed_at < MAE_STEPS, "the kill came too late to interrupt the run"
    assert "resumed from" in stdout and "step 4" in stdout
    full = {m["step"]: m for m in read_metrics(mae_run)}
    resumed = {m["step"]: m for m in read_metrics(run_dir)}
    assert sorted(resumed) == list(range(1, MAE_STEPS + 1))  # no duplicated or missing steps after truncation
    for step in range(5, MAE_STEPS + 1):
        assert resumed[step]["loss"] == pytest.approx(full[step]["loss"], rel=1e-5, abs=1e-6), step
        assert resumed[step]["lr"] == pytest.approx(full[step]["lr"])


def test_killed_and_resumed_runs_leave_no_shared_memory_behind(resumed_run):
    """DeepSpeed's CPU all-reduce buffers (66 MB per rank) are unlinked once mapped (Trainer.init_distributed),
    so neither the SIGKILLed run nor the resumed one leaves /dev/shm files."""
    assert not resumed_run[3]


@pytest.fixture(scope="session")
def handoff_run(workdir, mae_run):
    """WSP initialised from the MAE checkpoint, one step at learning rate 0: weights stay as loaded."""
    run_dir = os.path.join(workdir, "wsp_handoff")
    out = run("vit_tiny_wsp.py", TINY + [f"output_dir={run_dir}", "train.steps=1", "optim.lr=0", "optim.base_lr=0",
                                         "optim.weight_decay=0", f"checkpoint.init_from={mae_run}/checkpoints"],
              cwd=workdir)
    assert out.returncode == 0, out.stdout[-4000:]
    return run_dir, out.stdout


def test_handoff_loads_every_encoder_weight_and_no_decoder_weight(mae_run, handoff_run):
    run_dir, stdout = handoff_run
    mae_state = read_zero_checkpoint(os.path.join(mae_run, "checkpoints"))
    wsp_state = read_zero_checkpoint(os.path.join(run_dir, "checkpoints"))
    encoder_keys = {k for k in mae_state if not k.startswith(("decoder_", "mask_token"))}
    assert set(wsp_state) == encoder_keys | {"head.weight", "head.bias"}
    for k in encoder_keys:  # bf16 parameters on both sides: the handoff rounds fp32 masters to bf16 once
        torch.testing.assert_close(wsp_state[k], mae_state[k].bfloat16().float(), rtol=0, atol=0, msg=k)
    assert f"loaded {len(encoder_keys)} encoder tensors" in stdout
    assert "fresh: ['head.weight', 'head.bias']" in stdout


def test_consolidated_encoder_round_trips_into_core(workdir, mae_run):
    out = os.path.join(workdir, "encoder.safetensors")
    info = consolidate(os.path.join(mae_run, "checkpoints"), out)
    assert info["step"] == MAE_STEPS
    model = create_vit("vit_micro")
    report = load_pretrained(model, out)  # strict: every timm key present, nothing extra
    assert not report.missing and not report.unexpected
    full = read_zero_checkpoint(os.path.join(mae_run, "checkpoints"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, full[k]), k
    assert not any(k.startswith(("decoder_", "mask_token")) for k in load_file(out))


def test_tiny_wsp_from_mae_loss_falls(workdir, mae_run):
    run_dir = os.path.join(workdir, "wsp_train")
    out = run("vit_tiny_wsp.py", TINY + [f"output_dir={run_dir}", "train.steps=20", "optim.lr=3e-3",
                                         "optim.warmup_steps=2", f"checkpoint.init_from={mae_run}/checkpoints"],
              cwd=workdir)
    assert out.returncode == 0, out.stdout[-4000:]
    losses = [m["loss"] for m in read_metrics(run_dir)]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


def test_divergence_stops_with_a_message_and_keeps_the_last_good_checkpoint(workdir):
    run_dir = os.path.join(workdir, "diverge")
    out = run("vit_tiny_mae.py", TINY + [f"output_dir={run_dir}", "train.steps=30", "checkpoint.every_steps=1",
                                         "optim.lr=1e30", "optim.warmup_steps=0", "parallel.precision=fp32"],
              cwd=workdir)
    assert out.returncode != 0
    assert "training diverged" in out.stdout and "last good checkpoint" in out.stdout
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    latest = open(os.path.join(ckpt_dir, "latest")).read().strip()
    last_logged = read_metrics(run_dir)[-1]["step"]
    assert latest == f"step_{last_logged:08d}" and os.path.isfile(os.path.join(ckpt_dir, latest, "COMPLETE"))


def test_bad_override_fails_fast_in_every_rank(workdir):
    out = run("vit_tiny_mae.py", ["train.stepz=3"], cwd=workdir, timeout=120)
    assert out.returncode != 0
    assert out.stdout.count("unknown config key 'train.stepz'; did you mean train.steps?") == 2  # both ranks


def test_mawstron_train_rejects_a_bad_key_before_any_rank_starts(workdir):
    exe = os.path.join(os.path.dirname(sys.executable), "mawstron")
    recipe = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "vit_tiny_mae.py")
    out = subprocess.run([exe, "train", recipe, "--gpus", "2", "--set", "optim.betas=0.9"], cwd=workdir,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "optim.betas expects 2 values" in out.stderr and "deepspeed" not in out.stdout


def test_throughput_benchmark_prints_one_json_line(workdir):
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "throughput.py")
    recipe = os.path.join(os.path.dirname(script), "..", "recipes", "vit_tiny_mae.py")
    out_json = os.path.join(workdir, "bench.json")
    from distributed_runs import env, free_port

    deepspeed = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    proc = subprocess.run([deepspeed, "--num_gpus", "2", "--master_port", str(free_port()), script, "--recipe", recipe,
                           "--set", "model.preset=vit_micro", "--warmup-steps", "2", "--steps", "4", "--out", out_json],
                          cwd=workdir, env=env(), capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # rank 0 only
    result = json.loads(lines[0])
    assert result == json.load(open(out_json))
    assert result["world_size"] == 2 and result["measured_steps"] == 4 and result["zero_stage"] == 3
    assert result["images_per_s"] > 0 and result["peak_mem_gib"] > 0 and result["tflops_per_device"] > 0
    assert result["mfu"] is None and "not meaningful" in result["mfu_note"]
    expected = result["global_batch"] / result["step_time_s_median"]
    assert result["images_per_s"] == pytest.approx(expected)


# ----------------------------------------------------------------------------------------------- real data
@pytest.fixture(scope="session")
def shard_data(workdir):
    """`mawstron data synth` shards (4 x 64 images, 32 px) with one deliberately broken JPEG in train-000001,
    and their vocabulary."""
    from data_helpers import break_jpeg

    out = os.path.join(workdir, "shards")
    exe = os.path.join(os.path.dirname(sys.executable), "mawstron")
    subprocess.run([exe, "data", "synth", "--out", out, "--images", "256", "--size", "32", "--shard-size", "64",
                    "--eval-images", "32"], check=True, capture_output=True, timeout=120)
    break_jpeg(os.path.join(out, "train-000001.tar"), "000000070", how="garbage")
    subprocess.run([exe, "data", "vocab", "--shards", os.path.join(out, "train-*.tar"), "--min-count", "3",
                    "--synonyms", os.path.join(out, "synonyms.json"), "--out", os.path.join(out, "vocab.json")],
                   check=True, capture_output=True, timeout=120)
    return out


def shard_overrides(data):
    return ["data.source=shards", f"data.shards={data}/train-*.tar", f"data.vocab={data}/vocab.json",
            "data.loader=dali", "data.dali_device=cpu", "data.num_workers=1"]


@pytest.mark.parametrize("stage", ["mae", "wsp"])
def test_training_on_shards_through_dali_skips_the_broken_jpeg(workdir, shard_data, stage):
    run_dir = os.path.join(workdir, f"{stage}_shards")
    steps = 4
    out = run(f"vit_tiny_{stage}.py", TINY + shard_overrides(shard_data)
              + [f"output_dir={run_dir}", f"train.steps={steps}", "checkpoint.init_from="], cwd=workdir)
    assert out.returncode == 0, out.stdout[-4000:]
    last = read_metrics(run_dir)[-1]
    assert last["step"] == steps and last["images_seen"] == steps * 8 * 2
    assert last["skipped"] >= 1 and last["skipped_by_reason"]["corrupt_jpeg"] == 1
    assert "worst shards: train-000001.tar (1)" in out.stdout
    ranks = [json.load(open(os.path.join(run_dir, f"data_rank{r}.json"))) for r in range(2)]
    names = [[os.path.basename(s) for s in r["shards"]] for r in ranks]
    assert names == [["train-000000.tar", "train-000002.tar"], ["train-000001.tar", "train-000003.tar"]]
    assert ranks[0]["skipped"] == 0 and ranks[1]["skipped"] == 1  # only rank 1 reads the broken shard
    if stage == "wsp":
        assert last["loss"] == last["loss"]  # finite: all-zero rows are dropped by the loss, not NaN


def test_finetune_from_mae_on_labelled_shards(workdir, shard_data, mae_run):
    """The transfer stage: labelled shards (json `label`) as one-hot targets, encoder from the MAE run, fresh
    head, layer-wise lr decay, label smoothing."""
    run_dir = os.path.join(workdir, "finetune")
    overrides = TINY + [f"data.shards={shard_data}/eval-train-*.tar", "data.dali_device=cpu", "data.num_workers=1",
                        f"output_dir={run_dir}", "train.steps=4", "checkpoint.every_steps=4",
                        f"checkpoint.init_from={mae_run}/checkpoints"]
    out = run("vit_tiny_finetune.py", overrides, cwd=workdir)
    assert out.returncode == 0, out.stdout[-4000:]
    assert "[mawstron] init_from " in out.stdout
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(r["loss"] == r["loss"] and r["loss"] > 0 for r in records)
    with open(os.path.join(shard_data, "manifest.json")) as f:
        num_classes = json.load(f)["num_classes"]
    head = read_zero_checkpoint(os.path.join(run_dir, "checkpoints"))["head.weight"]
    assert head.shape[0] == num_classes
    # the consolidated file names its classes: the model is rebuilt from the file alone
    from mawstron.core import create_vit_from_checkpoint

    out = os.path.join(workdir, "finetuned.safetensors")
    consolidate(os.path.join(run_dir, "checkpoints"), out, keep_head=True)
    model, report = create_vit_from_checkpoint(out)
    assert model.head.out_features == num_classes == report.num_classes
    assert report.vocab == json.load(open(os.path.join(shard_data, "manifest.json")))["classes"]


def test_a_run_folder_loads_consolidates_and_evaluates_as_pure_json(workdir, mae_run, shard_data):
    """What a newcomer passes first: the run folder itself, not its checkpoints/ (load_pretrained, consolidate,
    eval --json with nothing but the JSON on stdout)."""
    model = create_vit("vit_micro")
    report = load_pretrained(model, mae_run)  # the ZeRO folder reader that mawstron.parallel registers
    assert not report.missing and not report.unexpected and report.metadata["preset"] == "vit_micro"
    exe = os.path.join(os.path.dirname(sys.executable), "mawstron")
    out_file = os.path.join(workdir, "from_run_folder.safetensors")
    out = subprocess.run([exe, "consolidate", mae_run, "--out", out_file], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.startswith("wrote"), out.stdout + out.stderr
    assert "Processing zero checkpoint" not in out.stdout + out.stderr  # DeepSpeed's chatter hidden without --verbose
    # --tag reads the ZeRO shards directly: their merge's chatter must stay off stdout too
    out = subprocess.run([exe, "eval", "--checkpoint", mae_run, "--tag", "16", "--data", shard_data, "--json",
                          "--loader", "torch", "--shots", "1", "--draws", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)  # the whole of stdout is one JSON document
    assert result["train_images"] == 32 and 0 <= result["linear_probe_accuracy"] <= 1
