"""``mawstron doctor``: is this machine ready to train?  Each check runs the real thing where it can (a CUDA
tensor, an NCCL version, a DALI pipeline decoding a JPEG, a Triton attention kernel compiled and run for this GPU
against the PyTorch reference) and says what is missing and how to install it.

On a machine without a GPU the GPU checks report what is missing (CPU ranks over gloo still work: ``make demo``);
``require_gpu=True`` turns that into failures, for a cluster node that must have them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import asdict, dataclass

from .hostfile import HostfileError, describe, read_hostfile, world_size

TORCH_CUDA_INDEX = "https://download.pytorch.org/whl/cu126"


@dataclass
class Check:
    name: str
    status: str  # ok | missing | fail | skip
    detail: str
    fix: str = ""


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def check_torch(require_gpu: bool) -> list[Check]:
    import torch

    cuda = torch.version.cuda
    out = [Check("torch", "ok" if cuda or not require_gpu else "fail",
                 f"{torch.__version__} ({f'CUDA {cuda} build' if cuda else 'CPU build'})",
                 "" if cuda else
                 f"for GPUs install a CUDA build first: pip install torch --index-url {TORCH_CUDA_INDEX}")]
    if torch.cuda.is_available():
        names = [f"{torch.cuda.get_device_name(i)} (sm_{''.join(map(str, torch.cuda.get_device_capability(i)))})"
                 for i in range(torch.cuda.device_count())]
        out.append(Check("GPUs", "ok", f"{len(names)}: {', '.join(dict.fromkeys(names))}"))
    else:
        why = "a CPU build of torch" if not cuda else "no CUDA device visible (driver, CUDA_VISIBLE_DEVICES)"
        out.append(Check("GPUs", "fail" if require_gpu else "missing", f"none ({why}); CPU ranks over gloo only",
                         "install the NVIDIA driver and a CUDA build of torch" if not cuda else
                         "check nvidia-smi and CUDA_VISIBLE_DEVICES"))
    return out


def check_nccl(require_gpu: bool) -> Check:
    import torch
    import torch.distributed as dist

    if not torch.cuda.is_available():
        return Check("NCCL", "fail" if require_gpu else "skip", "no GPU: the ranks talk over gloo",
                     "NCCL comes with a CUDA build of torch")
    if not dist.is_nccl_available():
        return Check("NCCL", "fail", "this torch build has no NCCL",
                     f"pip install torch --index-url {TORCH_CUDA_INDEX}")
    version = ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else "?"
    return Check("NCCL", "ok", f"{version} (NCCL_DEBUG=INFO on a run shows the network it picked)")


def check_deepspeed(require_gpu: bool) -> list[Check]:
    ds_version = _version("deepspeed")
    if ds_version is None:
        return [Check("DeepSpeed", "fail", "not installed", "pip install -e . (deepspeed is a dependency)")]
    import torch

    from deepspeed.git_version_info import installed_ops

    prebuilt = sorted(op for op, built in installed_ops.items() if built)
    ninja = shutil.which("ninja") or _version("ninja")
    built = ", ".join(prebuilt) or "none (JIT on first use)"
    checks = [Check("DeepSpeed", "ok", f"{ds_version}; ops prebuilt: {built}")]
    if not prebuilt:
        if not ninja:
            checks.append(Check("DeepSpeed JIT", "fail", "ops build on first use but ninja is missing",
                                "pip install ninja, or prebuild: DS_BUILD_OPS=1 pip install deepspeed"))
        elif torch.cuda.is_available():
            from torch.utils.cpp_extension import CUDA_HOME

            checks.append(Check("DeepSpeed JIT", "ok" if CUDA_HOME else "fail",
                                f"ninja found; CUDA_HOME={CUDA_HOME}" if CUDA_HOME else "no nvcc (CUDA_HOME unset)",
                                "" if CUDA_HOME else "load the CUDA toolkit (module load cuda) or prebuild the ops "
                                                     "on a node that has it: DS_BUILD_OPS=1 pip install deepspeed"))
        else:
            checks.append(Check("DeepSpeed JIT", "ok", "ninja found; CPU ops build on the first run (1-2 min, once)"))
    return checks


def check_dali(require_gpu: bool) -> Check:
    import torch

    dists = [d for d in ("nvidia-dali-cuda120", "nvidia-dali-cuda110", "nvidia-dali-cuda130") if _version(d)]
    if not dists:
        return Check("DALI", "fail" if require_gpu else "missing", "not installed (data.loader=torch still works)",
                     "pip install nvidia-dali-cuda120 (CUDA 12 driver)")
    device = "mixed" if torch.cuda.is_available() else "cpu"
    try:
        decoded = _decode_one_jpeg(device)
    except Exception as e:  # noqa: BLE001 - any failure of the pipeline is the finding
        return Check("DALI", "fail", f"{dists[0]} {_version(dists[0])}: a {device} decode failed: "
                                     f"{str(e).splitlines()[0][:160]}", "reinstall DALI for this CUDA version")
    note = "nvJPEG on the GPU" if device == "mixed" else "cpu decoder (mixed/nvJPEG needs a GPU)"
    status = "ok" if device == "mixed" or not require_gpu else "fail"
    return Check("DALI", status, f"{dists[0]} {_version(dists[0])}; decoded a JPEG to {decoded} with the {note}")


def _decode_one_jpeg(device: str) -> tuple:
    import io

    import numpy as np
    from nvidia.dali import fn, pipeline_def
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (48, 32), (200, 40, 40)).save(buf, format="JPEG")
    data = np.frombuffer(buf.getvalue(), dtype=np.uint8)

    @pipeline_def(batch_size=1, num_threads=1, device_id=0 if device == "mixed" else None)
    def pipe():
        return fn.decoders.image(fn.external_source(source=lambda: [data], batch=True), device=device)

    p = pipe()
    p.build()
    (out,) = p.run()
    return tuple(out.as_cpu().as_array().shape[1:]) if device == "mixed" else tuple(out.as_array().shape[1:])


def check_triton(require_gpu: bool, compile_kernels: bool = True) -> Check:
    import torch

    version = _version("triton")
    if version is None:
        return Check("Triton", "fail" if require_gpu else "missing", "not installed (the PyTorch reference ops run)",
                     "pip install triton (Linux; comes with CUDA builds of torch)")
    if not torch.cuda.is_available():
        return Check("Triton", "fail" if require_gpu else "skip",
                     f"{version}; no GPU to compile the kernels for (TRITON_INTERPRET=1 runs them on the CPU)")
    if not compile_kernels:
        return Check("Triton", "ok", f"{version}; kernel compilation not checked (--no-compile)")
    try:
        error, capability = _attention_on_this_gpu()
    except Exception as e:  # noqa: BLE001 - a compile or launch failure is the finding
        return Check("Triton", "fail", f"{version}: the attention kernel failed on this GPU: "
                                       f"{str(e).splitlines()[0][:200]}",
                     "check the CUDA driver, and that Triton matches torch (pip install -U triton)")
    ok = error < 2e-2
    return Check("Triton", "ok" if ok else "fail",
                 f"{version}; attention kernel compiled for sm_{capability} and ran: max |error| {error:.1e} vs "
                 f"the PyTorch reference (bf16)", "" if ok else "report the numbers: the kernel disagrees")


def _attention_on_this_gpu() -> tuple[float, str]:
    import torch

    from mawstron.kernels import flash_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 197, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    scale = 64 ** -0.5
    out = flash_attention(q, k, v, softmax_scale=scale)
    ref = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * scale, dim=-1) @ v.float()
    torch.cuda.synchronize()
    capability = "".join(map(str, torch.cuda.get_device_capability()))
    return float((out.float() - ref).abs().max()), capability


def check_extras() -> list[Check]:
    out = []
    for module, dist, what in (("tensorboard", "tensorboard", "TensorBoard logging of the metrics"),
                               ("wandb", "wandb", "Weights & Biases logging (optional)"),
                               ("pynvml", "nvidia-ml-py", "GPU monitoring"),
                               ("mpi4py", "mpi4py", "MPI-based launchers")):
        present = importlib.util.find_spec(module) is not None
        fix = "pip install wandb" if module == "wandb" else "pip install -e '.[cluster]'"
        out.append(Check(module, "ok" if present else "missing",
                         f"{_version(dist) or 'installed'}: {what}" if present else f"not installed: {what}",
                         "" if present else fix))
    return out


def check_hostfile(path: str, gpus_per_node: int = 0) -> Check:
    try:
        pool = read_hostfile(path)
        world = world_size(pool, gpus_per_node, path)
    except HostfileError as e:
        return Check("hostfile", "fail", str(e))
    return Check("hostfile", "ok", f"{path}: {describe(pool, world)}")


def run_checks(require_gpu: bool = False, hostfile: str = "", compile_kernels: bool = True) -> list[Check]:
    checks = [Check("python", "ok", sys.version.split()[0])]
    checks += check_torch(require_gpu)
    checks.append(check_nccl(require_gpu))
    checks += check_deepspeed(require_gpu)
    checks.append(check_dali(require_gpu))
    checks.append(check_triton(require_gpu, compile_kernels))
    checks += check_extras()
    if hostfile:
        checks.append(check_hostfile(hostfile))
    for var in ("CUDA_VISIBLE_DEVICES", "NCCL_SOCKET_IFNAME", "NCCL_IB_HCA", "MAWSTRON_CACHE"):
        if os.environ.get(var):
            checks.append(Check(var, "ok", os.environ[var]))
    return checks


def as_dicts(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]
