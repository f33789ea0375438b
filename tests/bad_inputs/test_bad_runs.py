"""Runs that are cut short, time out or are restarted: what they leave behind is readable and true, and nothing
they started outlives them."""

import json
import os
import subprocess
import sys

import pytest

from mawstron.parallel import checkpoint as ckpt
from mawstron.parallel import universal


def fake_save(ckpt_dir, step):
    tag = ckpt.tag_for_step(step)
    os.makedirs(os.path.join(ckpt_dir, tag))
    ckpt.finalize(ckpt_dir, tag, step, {}, keep_last=2, world_size=1)
    return tag


# ------------------------------------------------------------------------------------------- torn metrics
def test_a_torn_last_metrics_line_does_not_block_resume(tmp_path, capsys):
    """metrics.jsonl cut mid-line by a crash or full disk: the partial line is dropped with a warning on resume."""
    from mawstron.parallel.metrics import MetricsWriter

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
