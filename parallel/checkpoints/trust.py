"""What a checkpoint folder may make Python do when it is read: nothing but rebuild tensors and plain containers.

DeepSpeed writes its checkpoints with ``torch.save`` (pickle) and reads them back with ``weights_only=False``, which
lets a file call any function it names: a checkpoint folder from elsewhere (a colleague's run, a download) could
run code on the machine that reads it.  Every path that reads a ZeRO checkpoint folder it did not just write
(``checkpoint.init_from``, ``mawstron eval``/``features``/``consolidate``, the universal converter) goes through
``restricted_loads()``: each ``torch.load`` inside runs with ``weights_only=True`` and an explicit allow-list of the
few classes DeepSpeed's and mawstron's files hold (``ALLOWED``).  A file that names anything else is refused with
one line naming the file and the global, and how to accept it knowingly: ``--trust-checkpoint`` on the command
line, or ``MAWSTRON_TRUST_CHECKPOINT=1`` in the environment (ranks inherit it).

``--resume`` of one's own run keeps DeepSpeed's own loader (``engine.load_checkpoint``): the run wrote those files.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import runpy
import sys

import torch

TRUST_ENV = "MAWSTRON_TRUST_CHECKPOINT"
TRUST_FLAG = "--trust-checkpoint"

# The globals in DeepSpeed's ZeRO-0..3 model/optimizer state files and universal-checkpoint files (listed with
# torch.serialization.get_unsafe_globals_in_checkpoint on checkpoints written by this DeepSpeed version), plus
# the NumPy RNG state mawstron's trainer stores in its client state.  Classes only: rebuilding one sets attributes.
ALLOWED = (
    "argparse.Namespace",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.ndarray",
    "numpy.dtype",
    "numpy.dtypes.UInt32DType",
    "numpy.dtypes.Float64DType",
    "numpy.dtypes.Int64DType",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
)


class UntrustedCheckpoint(ValueError):
    """A checkpoint file needs a global outside the allow-list; the message is one line with the fix."""


def trusted() -> bool:
    return os.environ.get(TRUST_ENV, "") not in ("", "0", "false", "no")


def trust_checkpoints() -> None:
    """Accept any pickle in checkpoint folders from now on (``--trust-checkpoint``), for this process and the
    processes it starts."""
    os.environ[TRUST_ENV] = "1"


def _resolve(name: str):
    module, _, attr = name.rpartition(".")
    try:
        obj = importlib.import_module(module)
    except ImportError:
        try:  # a nested name: module.Class.attr
            parent, _, cls = module.rpartition(".")
            obj = getattr(importlib.import_module(parent), cls)
        except (ImportError, AttributeError, ValueError):
            return None
    return getattr(obj, attr, None)


def allowed_globals() -> list:
    """The objects of ``ALLOWED`` that exist in the installed versions (NumPy 1 and 2 name theirs differently)."""
    out = []
    for name in ALLOWED:
        obj = _resolve(name)
        if obj is not None and (isinstance(obj, type) or callable(obj)):
            module, _, attr = name.rpartition(".")
            # torch looks an object up by its own __module__/__name__; name it as the pickle does where they differ
            out.append((obj, name) if f"{getattr(obj, '__module__', '')}.{getattr(obj, '__name__', '')}" != name
                       else obj)
    return out


def _describe(f, error: Exception) -> str:
    path = f if isinstance(f, (str, os.PathLike)) else getattr(f, "name", "a checkpoint file")
    unsafe = []
    if isinstance(f, (str, os.PathLike)):
        try:
            unsafe = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(f))
        except Exception:
            unsafe = []
    what = f"the global {unsafe[0]}" + (f" (and {len(unsafe) - 1} more)" if len(unsafe) > 1 else "") if unsafe \
        else f"what it holds ({str(error).strip().splitlines()[0][:200]})"
    return (f"{os.fspath(path)}: refused to load {what}, which no DeepSpeed or mawstron checkpoint needs (unpickling "
            f"it could run code from the file); if you trust where this folder came from, pass {TRUST_FLAG} "
            f"(or set {TRUST_ENV}=1)")


def _restricted(real_load):
    def load(f, map_location=None, pickle_module=None, *, weights_only=None, mmap=None, **kwargs):
        with torch.serialization.safe_globals(allowed_globals()):
            try:
                return real_load(f, map_location=map_location, weights_only=True, mmap=mmap, **kwargs)
            except pickle.UnpicklingError as e:
                if not _needs_a_global(f, e):
                    raise  # damaged, or not a checkpoint at all: the caller names the file and the fix
                raise UntrustedCheckpoint(_describe(f, e)) from None
    return load


def _needs_a_global(f, error: Exception) -> bool:
    """Whether the refused load asked for a global outside the allow-list (rather than failing on bad bytes)."""
    if "global" in str(error).lower():  # torch: "Unsupported global: GLOBAL x.y was not an allowed global ..."
        return True
    if isinstance(f, (str, os.PathLike)):
        try:
            return bool(torch.serialization.get_unsafe_globals_in_checkpoint(f))
        except Exception:  # noqa: BLE001 - not a zip checkpoint: nothing more to read from it
            return False
    return False


@contextlib.contextmanager
def restricted_loads(trust: bool | None = None):
    """Inside the block every ``torch.load`` (DeepSpeed's included) reads with ``weights_only=True`` and
    ``ALLOWED``; with ``trust`` (default: ``--trust-checkpoint`` / ``MAWSTRON_TRUST_CHECKPOINT``) nothing changes.
    Not thread-safe: it swaps ``torch.load`` for the duration (the commands that use it are single-threaded)."""
    if trust if trust is not None else trusted():
        yield
        return
    real_load = torch.load
    torch.load = _restricted(real_load)
    try:
        yield
    finally:
        torch.load = real_load


def safe_load(path: str, map_location="cpu"):
    """``torch.load`` of one file under ``restricted_loads``."""
    with restricted_loads():
        return torch.load(path, map_location=map_location)


def run_module_restricted(argv: list[str]) -> None:
    """``python -m mawstron.parallel.checkpoints.trust MODULE ARGS...``: run ``MODULE`` as ``__main__`` with restricted loads
    (DeepSpeed's universal converter, in its subprocess; its worker pools fork and keep the restriction)."""
    module, *args = argv
    sys.argv = [module, *args]
    with restricted_loads():
        runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    try:
        run_module_restricted(sys.argv[1:])
    except UntrustedCheckpoint as e:
        print(f"mawstron: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
