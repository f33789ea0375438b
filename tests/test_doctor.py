"""`mawstron doctor` on this CPU machine: it runs every check for real, reports what a GPU cluster node would
need and has not got here (GPUs, NCCL, GPU decoding, Triton on a GPU), and fails on them with --require-gpu."""

from __future__ import annotations

import json

import torch

from mawstron.cli.main import main


def checks(capsys, *argv):
    rc = main(["doctor", "--json", *argv])
    rows = {row["name"]: row for row in map(json.loads, capsys.readouterr().out.strip().splitlines())}
    return rc, rows


def test_doctor_reports_what_is_missing_on_a_cpu_machine(capsys, tmp_path):
    rc, rows = checks(capsys)
    assert {"torch", "GPUs", "NCCL", "DeepSpeed", "DALI", "Triton", "tensorboard", "wandb"} <= set(rows)
    if not torch.cuda.is_available():
        assert rc == 0  # a CPU machine is fine for CPU ranks
        assert rows["GPUs"]["status"] == "missing" and "CUDA build" in rows["GPUs"]["fix"]
        assert rows["NCCL"]["status"] == "skip" and rows["Triton"]["status"] in ("skip", "missing")
        assert rows["DALI"]["status"] == "ok" and "decoded a JPEG to (32, 48, 3) with the cpu decoder" in \
            rows["DALI"]["detail"]
        rc, rows = checks(capsys, "--require-gpu")
        assert rc == 1 and {"GPUs", "NCCL", "Triton", "DALI"} <= {n for n, r in rows.items() if r["status"] == "fail"}
    assert rows["DeepSpeed"]["status"] == "ok"
    hosts = tmp_path / "hosts"
    hosts.write_text("node001 slots=8\nnode002 8\n")
    rc, rows = checks(capsys, "--hostfile", str(hosts), "--no-compile")
    assert rc == 1 and rows["hostfile"]["status"] == "fail" and "line 2: 'node002 8'" in rows["hostfile"]["detail"]
    hosts.write_text("node001 slots=8\nnode002 slots=8\n")
    rc, rows = checks(capsys, "--hostfile", str(hosts), "--no-compile")
    assert rows["hostfile"]["detail"].endswith("2 nodes x 8 GPUs = 16 ranks")
