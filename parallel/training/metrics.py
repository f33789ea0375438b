"""Per-step metrics: throughput, TFLOP/s and MFU per device, memory, data-wait share; JSON lines + TensorBoard."""

from __future__ import annotations

import json
import os
import resource
import sys

import torch

# Dense bf16 tensor-core peaks (TFLOP/s per GPU, without sparsity) from NVIDIA's data sheets.
PEAK_BF16_TFLOPS = {
    "H100 SXM": 989.4,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H200": 989.4,
    "A100": 312.0,
}


def device_peak_tflops(device: torch.device) -> tuple[str, float | None]:
    """(device name, bf16 peak) for MFU; the peak is None where MFU is not meaningful (CPU, unknown GPU)."""
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16_TFLOPS.items():
        model, *variant = key.split()
        if model in name and all(v.lower() in name.lower() for v in variant):
            return name, peak
    if "H100" in name:  # an H100 whose form factor the name does not spell out: assume SXM, say so
        return name + " (assumed SXM)", PEAK_BF16_TFLOPS["H100 SXM"]
    return name, None


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory of this rank: allocated device memory on a GPU, the process's max resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux reports KiB
    return rss_kib / 2**20


class MetricsWriter:
    """Rank 0 writes one JSON object per logged step to ``metrics.jsonl`` (and TensorBoard if installed)."""

    def __init__(self, run_dir: str, enabled: bool, resume_step: int | None = None):
        self.enabled = enabled
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.tb = None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        if resume_step is None:
            open(self.path, "w").close()
        else:
            self._truncate_after(resume_step)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
        except Exception:  # tensorboard is optional (the "cluster" extra)
            self.tb = None

    def _truncate_after(self, step: int) -> None:
        """On resume, drop records past the checkpoint (the resumed run writes those steps again) and any line
        that does not parse (a record torn by a crash or a full disk), with a warning; the file is replaced
        atomically, so a crash here leaves the old file or the new one."""
        if not os.path.exists(self.path):
            return
        kept, torn = [], []
        with open(self.path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except ValueError:  # JSONDecodeError and UnicodeDecodeError
                    torn.append(number)
                    continue
                if not isinstance(record, dict):
                    torn.append(number)
                elif record.get("step", 0) <= step:
                    kept.append(json.dumps(record) + "\n")
        if torn:
            print(f"[mawstron] warning: {self.path}: dropped {len(torn)} unreadable line(s) (line {torn[0]}"
                  f"{' ...' if len(torn) > 1 else ''}; a record torn by a crash or a full disk)", file=sys.stderr,
                  flush=True)
        tmp = f"{self.path}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            f.writelines(kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def progress_line(r: dict, total_steps: int) -> str:
    mfu = f" mfu {r['mfu']:.1%}" if r.get("mfu") is not None else ""
    return (
        f"step {r['step']}/{total_steps} loss {r['loss']:.4f} lr {r['lr']:.2e} gnorm {r['grad_norm']:.3f} "
        f"{r['images_per_s']:.1f} img/s {r['tflops_per_device']:.3f} TFLOP/s/dev{mfu} "
        f"mem {r['peak_mem_gib']:.2f} GiB wait {r['data_wait_share']:.0%}"
    )


def print_rank0(rank: int, *args) -> None:
    if rank == 0:
        print(*args, flush=True, file=sys.stdout)


def zero_partition_report(engine) -> dict:
    """This rank's share of the model under ZeRO: parameter elements held locally vs in total, and the bytes of
    each kind of model state it holds (measured from the tensors, not estimated)."""
    module = engine.module
    params = list(module.parameters())
    local = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params)
    total = sum(getattr(p, "ds_numel", p.numel()) for p in params)
    param_bytes = sum(
        (p.ds_tensor.numel() * p.ds_tensor.element_size()) if hasattr(p, "ds_tensor") else p.numel() * p.element_size()
        for p in params
    )
    opt = engine.optimizer
    masters = getattr(opt, "fp32_partitioned_groups_flat", [])
    master_bytes = sum(t.numel() * t.element_size() for t in masters)
    state_bytes = sum(
        v.numel() * v.element_size()
        for state in getattr(getattr(opt, "optimizer", opt), "state", {}).values()
        for v in state.values()
        if torch.is_tensor(v) and v.numel() > 1
    )
    grad_bytes = sum(t.grad.numel() * t.grad.element_size() for t in masters if t.grad is not None)
    buffer = getattr(opt, "grad_partitions_flat_buffer", None)
    if buffer is not None:
        grad_bytes += buffer.numel() * buffer.element_size()
    return {
        "local_params": local,
        "total_params": total,
        "param_bytes": param_bytes,
        "master_weight_bytes": master_bytes,
        "optimizer_state_bytes": state_bytes,
        "grad_bytes": grad_bytes,
    }
