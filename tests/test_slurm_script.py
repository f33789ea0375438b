"""recipes/slurm.sh outside Slurm (--dry-run): it writes the job's hostfile from a Slurm node list, runs every check
`mawstron train` makes before a launch, and prints the srun command that starts DeepSpeed's per-node launcher on
every node, with --resume added when the run folder already holds a checkpoint (a requeued job continues)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from mawstron.parallel.checkpoints import store as ckpt
from mawstron.parallel.launcher.hostfile import expand_nodelist, read_hostfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dry_run(tmp_path, *recipe_args, nodelist="node[001-032]"):
    env = dict(os.environ, SLURM_JOB_NODELIST=nodelist, GPUS_PER_NODE="8", HOSTFILE=str(tmp_path / "hosts"),
               PYTHON=sys.executable, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    env.pop("SLURM_JOB_ID", None)
    return subprocess.run(["bash", os.path.join(REPO, "recipes", "slurm.sh"), "--dry-run", *recipe_args],
                          env=env, capture_output=True, text=True, timeout=300)


def test_slurm_nodelists_expand_as_scontrol_does():
    assert expand_nodelist("node[001-003,010],gpu7") == ["node001", "node002", "node003", "node010", "gpu7"]
    assert len(expand_nodelist("node[001-032]")) == 32


def test_slurm_dry_run_checks_and_prints_the_per_node_launch(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    args = ["recipes/vit_l16_mae.py", "--set", "data.source=synthetic", "--set", f"output_dir={run_dir}"]
    # a run that already saved a checkpoint: the next start (a requeued job) continues it
    os.makedirs(run_dir / "checkpoints" / "step_00000004")
    ckpt.finalize(str(run_dir / "checkpoints"), "step_00000004", 4, {}, keep_last=2, world_size=256)
    out = dry_run(tmp_path, *args, "--set", "train.micro_batch=16")
    assert out.returncode == 0, out.stderr[-2000:]
    assert list(read_hostfile(str(tmp_path / "hosts")).values()) == [8] * 32
    assert "32 nodes x 8 GPUs = 256 ranks" in out.stderr and "micro-batch 16 x accumulation 1 x 256 ranks" in out.stderr
    assert "continuing it with --resume" in out.stderr
    words = shlex.split(out.stdout.strip().splitlines()[-1])
    assert words[:3] == ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    inner, rest = words[5], words[6:]
    assert "deepspeed.launcher.launch" in inner and '--node_rank="$SLURM_NODEID"' in inner
    python, world_info, master, port, recipe, *recipe_args = rest[1:]
    assert master == "node001" and port == "29500" and recipe == "recipes/vit_l16_mae.py"
    assert recipe_args[-1] == "--resume"
    import base64
    import json

    hosts = json.loads(base64.urlsafe_b64decode(world_info))
    assert len(hosts) == 32 and hosts["node032"] == list(range(8))
    from deepspeed.launcher.launch import parse_args  # the per-node launcher accepts what srun would start

    monkeypatch.setattr(sys, "argv", ["launch.py", f"--world_info={world_info}", "--node_rank=3",
                                      f"--master_addr={master}", f"--master_port={port}", recipe, *recipe_args])
    parsed = parse_args()
    assert parsed.node_rank == 3 and parsed.training_script == recipe
