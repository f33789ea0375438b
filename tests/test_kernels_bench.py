"""The kernel benchmarks' CPU mode (interpreter correctness sweep, JSON written, exit 0) in a subprocess."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("script,key", (("attention.py", "correctness"), ("kernels.py", "correctness")))
def test_benchmark_cpu_mode_writes_json(tmp_path, script, key):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CPU mode only; on a GPU the benchmarks time the kernels (minutes)")
    out = tmp_path / "result.json"
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MAWSTRON_KERNELS")}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), "--tiny", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "timings need a GPU" in proc.stdout
    result = json.loads(out.read_text())
    assert result["timings"] is None and result["interpreter"] is True
    for field in ("device", "torch", "triton", "git_commit", "date"):
        assert field in result
    assert result[key] and all(row["ok"] for row in result[key])
