"""benchmarks/gpu_check.sh --dry-run on a CPU machine: the plan, the interpreter correctness sweep on tiny shapes,
and the sm_90 compile of one attention shape, each part recorded in a status file (bounded: about a minute)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash, timeout")
def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu"
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MAWSTRON_KERNELS",
                                                            "MAWSTRON_ATTENTION_BWD")}
    env.update(OUT=str(out), PYTHON=sys.executable, TRITON_DEFAULT_FP_FUSION="1")
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), "--dry-run"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "plan (budgets in seconds" in proc.stdout
    status = dict(line.split(": ", 1) for line in (out / "gpu_check-status.txt").read_text().splitlines())
    assert set(status) == {"tune_plan", "interpreter_attention", "interpreter_kernels", "compile_sm90"}
    assert all(v.startswith("ok") for v in status.values()), status
    assert "15 table keys" in (out / "tune_attention-plan.txt").read_text()
    attention = json.loads((out / "attention-dry-run.json").read_text())
    assert attention["timings"] is None and {r["backward"] for r in attention["correctness"]} == {"fused", "split"}
    compiled = json.loads((out / "compile-sm90.json").read_text())["kernels"]
    matmuls = {k: v for k, v in compiled.items() if "preprocess" not in k}
    assert len(matmuls) == 4 and all(v["wgmma"] > 0 and v["mma_sync"] == 0 for v in matmuls.values()), compiled


def test_gpu_check_rejects_unknown_arguments(tmp_path):
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), "--bogus"],
                          capture_output=True, text=True, env=dict(os.environ, OUT=str(tmp_path)), timeout=60)
    assert proc.returncode == 2 and "unknown argument --bogus" in proc.stderr


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash, timeout")
def test_gpu_check_stops_every_part_at_its_total_budget(tmp_path):
    """BUDGET_S caps all parts together (a lent GPU gives 15 minutes in all): a part that would start after the
    budget is spent is skipped and said so, and the status is written as JSON as well as text."""
    out = tmp_path / "gpu"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(OUT=str(out), PYTHON=sys.executable, BUDGET_S="1")
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), "--dry-run"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    status = json.loads((out / "gpu_check-status.json").read_text())
    assert status["tune_plan"] == "ok"
    parts = ("interpreter_attention", "interpreter_kernels", "compile_sm90")
    assert all(status[p] == "skipped: the 1s budget of gpu_check is spent" for p in parts), status
    assert not (out / "attention-dry-run.json").exists()
