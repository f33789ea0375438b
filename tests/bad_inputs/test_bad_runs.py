"""Runs that are cut short, time out or are restarted: what they leave behind is readable and true, and nothing
they started outlives them."""

import json
import os
import signal
import subprocess
import sys

import pytest

from mawstron.parallel.checkpoints import store as ckpt
from mawstron.parallel.checkpoints import universal


def fake_save(ckpt_dir, step):
    tag = ckpt.tag_for_step(step)
    os.makedirs(os.path.join(ckpt_dir, tag))
    ckpt.finalize(ckpt_dir, tag, step, {}, keep_last=2, world_size=1)
    return tag


# ------------------------------------------------------------------------------------------- torn metrics
def test_a_torn_last_metrics_line_does_not_block_resume(tmp_path, capsys):
    """metrics.jsonl cut mid-line by a crash or full disk: the partial line is dropped with a warning on resume."""
    from mawstron.parallel.training.metrics import MetricsWriter

    run_dir = str(tmp_path)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        for step in (1, 2, 3, 4):
            f.write(json.dumps({"step": step, "loss": 1.0 / step}) + "\n")
        f.write('{"step": 5, "loss": 0.1')  # the crash
    writer = MetricsWriter(run_dir, enabled=True, resume_step=4)
    writer.write({"step": 5, "loss": 0.2})
    writer.close()
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5] and records[-1]["loss"] == 0.2
    err = capsys.readouterr().err
    assert "metrics.jsonl" in err and "dropped 1 unreadable line" in err
    assert not [n for n in os.listdir(run_dir) if ".tmp" in n]


# ------------------------------------------------------------------------------------------- subprocesses
GRANDCHILD = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(sys.argv[sys.argv.index("--output_folder") + 1] + ".pid", "w").write(str(child.pid))
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_converter_timeout_ends_the_workers_it_started(tmp_path, monkeypatch):
    """A universal conversion past its timeout is stopped with every process it started (no orphaned workers)."""
    ckpt_dir = str(tmp_path / "checkpoints")
    tag = fake_save(ckpt_dir, 2)
    monkeypatch.setattr(universal, "CONVERTER", ["-c", GRANDCHILD])
    with pytest.raises(RuntimeError, match="did not finish within 3 s"):
        universal.convert(ckpt_dir, tag, timeout_s=3)
    pid_file = universal.universal_dir(ckpt_dir, tag) + ".partial.pid"
    pid = int(open(pid_file).read())
    for _ in range(50):
        if not _alive(pid):
            break
        subprocess.run(["sleep", "0.1"])
    assert not _alive(pid), f"the converter's child {pid} outlived the timeout"
    assert sys.executable  # the converter ran as `python -c`, like DeepSpeed's `python -m`


# ------------------------------------------------------------------------------------------- signals
TINY = ["model.preset=vit_micro", "train.micro_batch=8", "train.global_batch=8", "mae.decoder_embed_dim=32",
        "mae.decoder_depth=1", "mae.decoder_num_heads=2", "train.log_every=1", "train.steps=400",
        "checkpoint.every_steps=1000", "data.source=shards", "data.loader=torch", "data.num_workers=2"]


def _start(run_dir, shards, *extra):
    """One rank without a launcher (`python recipe.py`), in its own process group, as a cluster job step."""
    from distributed_runs import RECIPES, env

    cmd = [sys.executable, os.path.join(RECIPES, "vit_tiny_mae.py")]
    for item in TINY + [f"output_dir={run_dir}", f"data.shards={shards}/train-*.tar"]:
        cmd += ["--set", item]
    # a terminal's foreground job takes Ctrl-C; a test run started in the background (`cmd &` from a script)
    # would pass its ignored SIGINT on, and the rank would rightly ignore the test's Ctrl-C
    return subprocess.Popen(cmd + list(extra), env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _interrupt(proc, run_dir, step, sig) -> str:
    """Send ``sig`` to the run's process group once it logged ``step`` steps; its output (killed if it hangs)."""
    from distributed_runs import wait_for_steps

    try:
        wait_for_steps(proc, run_dir, step)
        os.killpg(proc.pid, sig)
        return proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from data_helpers import make_collection

    out = str(tmp_path_factory.mktemp("shards"))
    make_collection(out, images=64, shard_size=32, size=32, eval_images=8)
    return out


def test_the_groups_sigterm_does_not_kill_dataloader_workers_before_the_save(tmp_path, shards):
    """SIGTERM to the whole process group (SLURM): DataLoader workers live on, the rank saves and exits 75."""
    from mawstron.parallel.training.status import read_status

    run_dir = str(tmp_path / "run")
    proc = _start(run_dir, shards)
    out = _interrupt(proc, run_dir, 2, signal.SIGTERM)
    assert proc.returncode == 75, out[-3000:]
    assert "killed by signal" not in out
    status = read_status(run_dir)
    assert status["state"] == "preempted" and status["last_checkpoint"], status

    # Ctrl-C (SIGINT to the foreground group) on the resumed run: status.json must not say "running" forever
    proc = _start(run_dir, shards, "--resume")
    out = _interrupt(proc, run_dir, status["step"] + 2, signal.SIGINT)
    assert proc.returncode != 0, out[-3000:]
    assert read_status(run_dir)["state"] == "interrupted", out[-3000:]


def test_ctrl_c_that_lands_in_a_finalizer_still_stops_the_run():
    """Ctrl-C landing in a finalizer (a DataLoader iterator's __del__ at an epoch boundary) is not lost."""
    from mawstron.parallel.training.resilience import InterruptHandler

    class Finalized:
        def __del__(self):
            # to this thread (os.kill may reach another thread of the test process): handled here, inside __del__
            signal.raise_signal(signal.SIGINT)

    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, whatever ran before
    try:
        caught = False
        try:  # Python's own handler raises KeyboardInterrupt inside __del__, where it is printed and dropped
            Finalized()
        except KeyboardInterrupt:
            caught = True
        assert not caught, "this Python no longer drops a KeyboardInterrupt raised in __del__"
        with InterruptHandler() as interrupt:
            Finalized()
            with pytest.raises(KeyboardInterrupt):
                interrupt.check()  # the trainer's check at the step boundary
            with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C does not wait for the step boundary
                signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler before is back
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # started with SIGINT ignored (nohup cmd &): it stays ignored
        with InterruptHandler() as interrupt:
            signal.raise_signal(signal.SIGINT)
            interrupt.check()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_overwrite_removes_the_old_runs_tokenizer(tmp_path):
    """--overwrite removes the earlier LiT run's tokenizer.json, which LiT would otherwise silently reuse."""
    from mawstron.parallel.config import RunConfig, apply_overrides
    from mawstron.parallel.launcher.preflight import clear_old_checkpoints

    cfg = apply_overrides(RunConfig(name="t"), [], [f"output_dir={tmp_path}"])
    fake_save(cfg.checkpoint_dir, 4)
    tokenizer = os.path.join(cfg.checkpoint_dir, "tokenizer.json")
    with open(tokenizer, "w") as f:
        f.write("{}")
    removed = clear_old_checkpoints(cfg)
    assert "tokenizer.json" in removed and not os.path.exists(tokenizer)
    assert not os.path.exists(os.path.join(cfg.checkpoint_dir, "step_00000004"))
