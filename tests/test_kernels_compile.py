"""The Triton kernels compile for sm_90 without a GPU, and their matmuls lower to Hopper's wgmma.

See tests/_compile_kernels.py.  CI compiles a representative subset (bf16, one sequence length per head dim, both
backward schedules, the configs the launchers pick on an H100) and the bf16 entries of the config table;
``python tests/_compile_kernels.py --full`` (every preset shape, bf16 and fp16) and ``--table`` (every entry) are
the manual runs, minutes each on two cores.
"""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _run(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MAWSTRON_ATTENTION_BWD")}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, set to silence its warning
    out = tmp_path / "ptx.json"
    proc = subprocess.run([sys.executable, os.path.join(HERE, "_compile_kernels.py"), *args, "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0 and "ALL OK" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    return json.loads(out.read_text())["kernels"]


def _assert_wgmma_only(kernels):
    matmul_kernels = {k: v for k, v in kernels.items() if "bwd preprocess" not in k}
    assert matmul_kernels
    wrong = {k: v for k, v in matmul_kernels.items() if v["wgmma"] == 0 or v["mma_sync"] != 0}
    assert not wrong, f"attention kernels not (only) on wgmma: {wrong}"


def test_kernels_compile_for_h100_and_attention_uses_wgmma(tmp_path):
    kernels = _run(tmp_path)
    attention = {k: v for k, v in kernels.items() if v["group"] == "attention"}
    # both backward schedules and the forward, for head dims 64, 80 (64 + 16) and 128
    for part in ("fwd", "bwd fused", "bwd dk/dv", "bwd dq"):
        for d in ("D64", "D80", "D128"):
            assert any(k.startswith(f"attention {part} ") and f" {d} " in k for k in attention), (part, d)
    _assert_wgmma_only(attention)
    others = {k for k in kernels if not k.startswith("attention")}
    assert any(k.startswith("layer_norm") for k in others) and any(k.startswith("mae_loss") for k in others)


def test_config_table_entries_compile_and_fit_shared_memory(tmp_path):
    kernels = _run(tmp_path, "--table", "--dtype", "bf16")
    import importlib

    table = importlib.import_module("mawstron.kernels.fused.attention_configs").load_table()
    bf16_keys = {k for k in table if "/bf16/" in k}
    assert bf16_keys and {k.split()[1] for k in kernels} == bf16_keys
    for key in bf16_keys:  # forward and both backward schedules of every entry
        assert {label.split(" ", 2)[2] for label in kernels if label.split()[1] == key} == {
            "fwd", "bwd fused", "bwd dk/dv", "bwd dq"}, key
    assert all(v["shared_bytes"] <= int(v["shared_limit"]) for v in kernels.values())
    _assert_wgmma_only({k: v for k, v in kernels.items() if k.startswith("table sm90")})
