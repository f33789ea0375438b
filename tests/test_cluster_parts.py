"""The pieces of cluster-proof runs that need no launcher: the global batch and its schedule, checkpoint
manifests and fallback, `mawstron checkpoints`, status.json, signal recording."""

import contextlib
import dataclasses
import io
import os
import runpy
import signal

import pytest

from mawstron.cli.main import main as cli_main
from mawstron.parallel.checkpoints import store as ckpt
from mawstron.parallel.config import ConfigError, RunConfig, apply_overrides
from mawstron.parallel.engine.ds_config import build_ds_config
from mawstron.parallel.launcher.launch import launch
from mawstron.parallel.training.resilience import PreemptionHandler
from mawstron.parallel.training.schedule import Schedule, format_duration
from mawstron.parallel.training.status import StatusFile, read_status

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def recipe_config(name):
    return runpy.run_path(os.path.join(REPO, "recipes", name), run_name="__test__")["CONFIG"]


def dry_run(recipe, *argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = launch(recipe_config(recipe), ["--dry-run", *argv])
    return code, out.getvalue()


def schedule_of(text):
    line = next(l for l in text.splitlines() if "schedule on" in l)
    return line.split(":", 1)[1].split(";", 1)[1]  # peak lr, steps, warmup, images seen


# ----------------------------------------------------------------------------------------------- global batch
@pytest.mark.parametrize("recipe,few,many", [("vit_2b14_mae.py", 64, 256), ("vit_h14_wsp.py", 64, 256),
                                             ("vit_l16_finetune.py", 8, 32)])
def test_paper_recipe_schedule_does_not_depend_on_the_gpu_count(recipe, few, many):
    cfg = recipe_config(recipe)
    gb = cfg.train.global_batch
    small = dataclasses.asdict(Schedule.of(cfg, few))
    large = dataclasses.asdict(Schedule.of(apply_overrides(cfg, [], [f"train.micro_batch={gb // many}"]), many))
    for key in ("global_batch", "peak_lr", "steps", "warmup_steps", "images_seen"):
        assert small[key] == large[key], key
    assert small["grad_accum"] * small["micro_batch"] * few == gb == large["grad_accum"] * large["micro_batch"] * many
    code_few, text_few = dry_run(recipe, "--gpus", str(few))
    code_many, text_many = dry_run(recipe, "--gpus", str(many), "--set", f"train.micro_batch={gb // many}")
    assert code_few == code_many == 0
    assert schedule_of(text_few) == schedule_of(text_many)
    assert f"global batch {gb} = " in text_few and f"{cfg.train.steps * gb:,} images seen" in text_many


def test_a_global_batch_that_cannot_divide_is_refused_with_the_fix():
    code, text = dry_run("vit_2b14_mae.py", "--gpus", "256")  # 4096 / (64 x 256) < 1
    assert code == 2
    line = next(l for l in text.splitlines() if "config error" in l)
    assert "train.global_batch=4096" in line and "set train.micro_batch=16" in line
    with pytest.raises(ConfigError, match="set train.micro_batch=8"):
        apply_overrides(RunConfig(), [], ["train.global_batch=48", "train.micro_batch=16"]).train.grad_accum_for(6)


def test_grad_accum_is_derived_and_an_explicit_one_must_agree():
    cfg = apply_overrides(RunConfig(), [], ["train.global_batch=64", "train.micro_batch=8"])
    assert cfg.train.grad_accum_for(2) == 4 and cfg.train.grad_accum_for(8) == 1
    ds = build_ds_config(cfg, world_size=4, width=64)
    assert ds["train_batch_size"] == 64 and ds["gradient_accumulation_steps"] == 2
    agreeing = apply_overrides(cfg, [], ["train.grad_accum=4"])
    assert agreeing.train.grad_accum_for(2) == 4
    with pytest.raises(ConfigError, match="contradicts train.global_batch"):
        agreeing.train.grad_accum_for(4)
    legacy = apply_overrides(RunConfig(), [], ["train.micro_batch=4", "train.grad_accum=3"])  # no global batch
    assert legacy.train.global_batch_for(8) == 96
    with pytest.raises(ConfigError, match="not a multiple of train.micro_batch"):
        apply_overrides(RunConfig(), [], ["train.global_batch=100", "train.micro_batch=8"])


def test_lr_scales_with_the_global_batch():
    wsp = recipe_config("vit_h14_wsp.py")
    assert Schedule.of(wsp, 128).peak_lr == pytest.approx(1e-3)  # the paper's lr at the paper's batch 8192
    half = apply_overrides(wsp, [], ["train.global_batch=4096"])
    assert Schedule.of(half, 64).peak_lr == pytest.approx(5e-4)
    mae = apply_overrides(RunConfig(), [], ["train.global_batch=512", "train.micro_batch=8", "optim.base_lr=1e-4"])
    assert Schedule.of(mae, 4).peak_lr == pytest.approx(2e-4)  # base_lr x 512 / 256 whatever the world size
    assert Schedule.of(mae, 64).peak_lr == pytest.approx(2e-4)


def test_durations_read_well():
    assert [format_duration(s) for s in (5, 125, 3 * 3600 + 240, 50 * 3600, None)] == ["5s", "2m05s", "3h04m",
                                                                                         "2d02h", "?"]


# ----------------------------------------------------------------------------------------------- manifests
def fake_checkpoint(ckpt_dir, step, world=2):
    """A checkpoint folder as the trainer writes it (DeepSpeed file names, random bytes), finalized."""
    tag = ckpt.tag_for_step(step)
    os.makedirs(os.path.join(ckpt_dir, tag))
    for r in range(world):
        for name in (f"zero_pp_rank_{r}_mp_rank_00_model_states.pt",
                     f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt"):
            with open(os.path.join(ckpt_dir, tag, name), "wb") as f:
                f.write(os.urandom(4096 + 100 * r))
    digests = {}
    for r in range(world):
        digests.update(ckpt.rank_file_digests(ckpt_dir, tag, r))
    ckpt.finalize(ckpt_dir, tag, step, {"train": {}}, keep_last=5, world_size=world, digests=digests)
    return tag


def test_manifest_names_a_truncated_or_flipped_shard_and_resume_falls_back(tmp_path):
    d = str(tmp_path)
    old, new = fake_checkpoint(d, 4), fake_checkpoint(d, 8)
    manifest = ckpt.read_manifest(d, new)
    assert len(manifest["files"]) == 5 and ckpt.verify_files(d, new) == []  # 4 shards + run_config.json
    assert ckpt.newest_verified_tag(d, say=lambda line: None) == new
    shard = os.path.join(d, new, "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt")
    with open(shard, "r+b") as f:  # flip one byte: same size, different checksum
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    said = []
    assert ckpt.newest_verified_tag(d, say=said.append) == old
    assert len(said) == 1 and shard in said[0] and "CRC-32" in said[0] and f"falling back to {d}/{old}" in said[0]
    assert ckpt.verify_files(d, new, checksums=False) == []  # sizes alone cannot see a flipped byte
    os.truncate(shard, 100)
    problems = ckpt.verify_files(d, new, checksums=False)
    assert len(problems) == 1 and "100 bytes, the manifest says 4196" in problems[0]
    os.remove(os.path.join(d, old, "zero_pp_rank_0_mp_rank_00_model_states.pt"))
    with pytest.raises(FileNotFoundError, match="no complete checkpoint verifies"):
        ckpt.newest_verified_tag(d, say=lambda line: None)


def test_checkpoints_cli_lists_and_verifies(tmp_path, capsys):
    d = str(tmp_path / "run" / "checkpoints")
    fake_checkpoint(d, 2, world=1)
    tag = fake_checkpoint(d, 4)
    assert cli_main(["checkpoints", "verify", str(tmp_path / "run")]) == 0  # the run folder works too
    out = capsys.readouterr().out
    assert "step_00000002" in out and "ok  <- latest" in out
    with open(os.path.join(d, tag, "zero_pp_rank_0_mp_rank_00_model_states.pt"), "r+b") as f:
        f.write(b"garbage")
    assert cli_main(["checkpoints", "list", d]) == 0  # same size: list cannot tell
    assert "damaged" not in capsys.readouterr().out
    assert cli_main(["checkpoints", "verify", d]) == 1
    out = capsys.readouterr().out
    row = next(l for l in out.splitlines() if l.startswith(tag))
    assert row.split()[1:3] == ["4", "2"] and "damaged" in row
    assert "zero_pp_rank_0_mp_rank_00_model_states.pt: CRC-32 differs" in out


def test_discard_moves_latest_first(tmp_path):
    d = str(tmp_path)
    old, new = fake_checkpoint(d, 4), fake_checkpoint(d, 8)
    ckpt.discard(d, new)
    assert not os.path.exists(os.path.join(d, new)) and open(os.path.join(d, "latest")).read() == old


# ----------------------------------------------------------------------------------------------- status, signals
def test_status_file_is_rewritten_whole(tmp_path):
    status = StatusFile(str(tmp_path), total_steps=10, enabled=True)
    status.update(state="running", step=0)
    status.step_done(1)
    status.update(step=1, last_loss=0.5, images_per_s=100.0)
    s = read_status(str(tmp_path))
    assert s["state"] == "running" and s["step"] == 1 and s["total"] == 10 and s["last_loss"] == 0.5
    assert s["eta_s"] is not None and s["eta_s"] >= 0 and s["elapsed_s"] >= 0 and s["updated"] > 0
    assert os.listdir(tmp_path) == ["status.json"]  # no temporary file left behind
    with pytest.raises(ValueError, match="not one of"):
        status.update(state="sleeping")
    StatusFile(str(tmp_path / "other"), 10, enabled=False).update(state="done")
    assert not os.path.exists(tmp_path / "other")


def test_preemption_handler_records_the_signal_and_restores_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    with PreemptionHandler() as handler:
        assert handler.received is None
        os.kill(os.getpid(), signal.SIGUSR1)
        assert handler.received == signal.SIGUSR1 and handler.signal_name() == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is before


def test_data_position_on_a_new_world_continues_the_images_seen():
    from mawstron.core.data.loader import SyntheticLoader
    from mawstron.parallel.checkpoints.universal import data_state_for_world

    # 2 ranks x 3 steps x accumulation 1 of micro-batch 8 = 48 images; on 1 rank (accumulation 2) the same 48
    old = [SyntheticLoader(img_size=8, micro_batch=8, rank=r, world_size=2) for r in range(2)]
    for loader in old:
        stream = iter(loader)
        for _ in range(3):
            next(stream)
    saved = old[0].state_dict()
    new = SyntheticLoader(img_size=8, micro_batch=8, rank=0, world_size=1)
    new.load_state_dict(data_state_for_world(saved, step=3, grad_accum=2))
    assert new.stats()["images_seen"] == sum(loader.stats()["images_seen"] for loader in old) == 48
    torch_state = data_state_for_world({"loader": "torch", "batches_served": 3, "no_known_hashtag": 1}, 3, 2)
    assert torch_state == {"loader": "torch", "batches_served": 6, "no_known_hashtag": 1}
    dali_state = data_state_for_world({"loader": "dali", "batches_served": 3, "dali_checkpoint": "base64:xx"}, 3, 4)
    assert dali_state["batches_served"] == 12 and dali_state["dali_checkpoint"] is None  # DALI restarts its split
