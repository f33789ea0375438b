"""Training checkpoints: crash-safe saves, verification, resume lookup, and reading ZeRO-3 shards back whole.

(Export to one file is ``parallel/checkpoints/consolidate.py``, which builds on this module.)

Layout of ``<checkpoint_dir>``::

    latest                      -> name of the newest *complete* checkpoint (replaced atomically)
    step_00000200/
        zero_pp_rank_*_model_states.pt, bf16_zero_pp_rank_*_optim_states.pt   (DeepSpeed, per rank;
                                  each rank's trainer state, data position and RNG ride in its model-states file)
        run_config.json           the RunConfig that produced it
        MANIFEST.json             every file's size and CRC-32 (each rank hashes its own shards right after
                                  writing them, in parallel); written before COMPLETE
        COMPLETE                  written by rank 0 after every rank finished writing
        universal/                (only after a resume on another world size) DeepSpeed's universal
                                  conversion of this checkpoint, cached

A crash during a save leaves a directory without ``COMPLETE`` and ``latest`` still naming the previous one; the
next complete save removes such torn folders.  Every rank fsyncs its shards before the manifest is written, and
rank 0 fsyncs the step folder before ``COMPLETE``, ``latest`` and the pruning of older checkpoints, so a power
loss cannot leave ``latest`` naming files that never reached the disk.  A ``step_*`` entry that is a symbolic link
is not this run's: it is never loaded, counted or deleted through.  A
complete checkpoint damaged later (truncated copy, bad disk, full quota) fails its manifest: resume and
consolidation name the file and fall back to the newest checkpoint that verifies.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import time
import zlib

import numpy as np
import torch

from .trust import UntrustedCheckpoint, restricted_loads

LATEST = "latest"
COMPLETE = "COMPLETE"
RUN_CONFIG = "run_config.json"
MANIFEST = "MANIFEST.json"
UNIVERSAL = "universal"
_TAG = re.compile(r"^step_(\d{8})$")
_RANK_FILE = re.compile(r"(?:zero_pp_rank_(\d+)_|ema_rank(\d+)\.)")  # DeepSpeed's shards, the weight EMA's
_HASH_CHUNK = 16 << 20


def tag_for_step(step: int) -> str:
    return f"step_{step:08d}"


def is_complete(ckpt_dir: str, tag: str) -> bool:
    folder = os.path.join(ckpt_dir, tag)
    return not os.path.islink(folder) and os.path.isfile(os.path.join(folder, COMPLETE))


def fsync_path(path: str) -> None:
    """Flush a file's or a folder's entries to the disk (a folder: the names created or renamed in it)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def complete_tags(ckpt_dir: str) -> list[str]:
    """Complete checkpoint tags in ``ckpt_dir``, oldest first."""
    if not os.path.isdir(ckpt_dir):
        return []
    tags = [t for t in os.listdir(ckpt_dir) if _TAG.match(t) and is_complete(ckpt_dir, t)]
    return sorted(tags)


def write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(os.path.dirname(os.path.abspath(path)))  # the rename itself reaches the disk


def file_digest(path: str) -> dict:
    """Size and CRC-32 of a file, streamed (CRC-32 runs at GB/s: cheap next to writing a multi-GB shard)."""
    crc, size = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return {"size": size, "crc32": f"{crc:08x}"}


def rank_file_digests(ckpt_dir: str, tag: str, rank: int, sync: bool = True) -> dict[str, dict]:
    """Digests of the files DeepSpeed wrote for data-parallel ``rank`` (``*zero_pp_rank_<rank>_*``); rank 0 also
    covers the files of no rank (``mp_rank_00_model_states.pt`` below ZeRO-3).  ``sync``: each file is fsynced
    first (DeepSpeed's ``torch.save`` does not), so the manifest only describes bytes that are on the disk."""
    folder = os.path.join(ckpt_dir, tag)
    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not os.path.isfile(path) or name in (COMPLETE, MANIFEST, RUN_CONFIG) or ".tmp." in name:
            continue
        owner = _RANK_FILE.search(name)
        if (int(owner.group(1) or owner.group(2)) if owner else 0) == rank:
            if sync:
                fsync_path(path)
            out[name] = file_digest(path)
    return out


def read_manifest(ckpt_dir: str, tag: str) -> dict | None:
    path = os.path.join(ckpt_dir, tag, MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def verify_files(ckpt_dir: str, tag: str, names: list[str] | None = None, checksums: bool = True) -> list[str]:
    """Problems of ``tag`` against its manifest (all files, or ``names``), one ``"FILE: what"`` each; ``[]``
    when it verifies.  ``checksums=False`` checks presence and sizes only (instant)."""
    manifest = read_manifest(ckpt_dir, tag)
    if manifest is None:
        return []
    problems = []
    for name in (manifest["files"] if names is None else names):
        expected = manifest["files"][name]
        path = os.path.join(ckpt_dir, tag, name)
        if not os.path.isfile(path):
            problems.append(f"{path}: missing")
            continue
        size = os.path.getsize(path)
        if size != expected["size"]:
            problems.append(f"{path}: {size} bytes, the manifest says {expected['size']} (truncated or overwritten)")
        elif checksums and file_digest(path)["crc32"] != expected["crc32"]:
            problems.append(f"{path}: CRC-32 differs from the manifest (corrupted)")
    return problems


def verdict(ckpt_dir: str, tag: str, checksums: bool = True) -> tuple[str, list[str]]:
    """("ok" | "damaged" | "no manifest", problems) of a complete checkpoint."""
    if read_manifest(ckpt_dir, tag) is None:
        return "no manifest", []
    problems = verify_files(ckpt_dir, tag, checksums=checksums)
    return ("damaged" if problems else "ok"), problems


def newest_verified_tag(ckpt_dir: str, problems_of=None, say=print) -> str:
    """The tag to load: the one ``latest`` names if it verifies, else the newest older complete one that does;
    each rejected checkpoint is reported in one line through ``say``.  ``problems_of(tag)`` verifies a tag
    (default: every file here; the trainer passes a collective check that splits files over ranks).
    A checkpoint written before manifests existed is accepted as it is."""
    problems_of = problems_of or (lambda t: verify_files(ckpt_dir, t))
    first = resolve_tag(ckpt_dir)
    candidates = [first] + [t for t in reversed(complete_tags(ckpt_dir)) if t < first]
    rejected = []
    for tag in candidates:
        problems = problems_of(tag)
        if not problems:
            if rejected:  # one line: which file failed, and where the run goes instead
                say(f"[mawstron] checkpoint {'; '.join(rejected)}; falling back to {os.path.join(ckpt_dir, tag)}, "
                    f"the newest that verifies")
            return tag
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        rejected.append(f"{tag} failed verification: {problems[0]}{more}")
    raise FileNotFoundError(f"{ckpt_dir}: no complete checkpoint verifies (" + "; ".join(rejected)
                            + "); restart without --resume, or restore the files from a copy")


def finalize(ckpt_dir: str, tag: str, step: int, run_config: dict, keep_last: int, world_size: int,
             digests: dict[str, dict] | None = None, say=print) -> None:
    """Rank 0, after a barrier that follows every rank's (fsynced) save: write the manifest (``digests`` from
    every rank plus the run config), fsync the step folder, mark ``tag`` complete, point ``latest`` at it, then
    prune the oldest complete checkpoints beyond ``keep_last`` and the torn folders of failed earlier saves."""
    folder = os.path.join(ckpt_dir, tag)
    write_atomic(os.path.join(folder, RUN_CONFIG), json.dumps(run_config, indent=1))
    if digests is not None:
        files = {**digests, RUN_CONFIG: file_digest(os.path.join(folder, RUN_CONFIG))}
        manifest = {"step": step, "world_size": world_size, "checksum": "crc32", "files": dict(sorted(files.items()))}
        write_atomic(os.path.join(folder, MANIFEST), json.dumps(manifest, indent=1))
    fsync_path(folder)  # every shard's name is on the disk before anything says the checkpoint is complete
    marker = {"step": step, "world_size": world_size, "time": time.time()}
    write_atomic(os.path.join(folder, COMPLETE), json.dumps(marker))
    write_atomic(os.path.join(ckpt_dir, LATEST), tag)  # fsyncs ckpt_dir: `latest` is durable before any pruning
    for old in complete_tags(ckpt_dir)[:-keep_last]:
        if old != tag:
            _remove_tag_folder(ckpt_dir, old, say)
    for torn in torn_tags(ckpt_dir, before=tag):
        say(f"[mawstron] removing {os.path.join(ckpt_dir, torn)}: a save that never completed (crash or full disk)")
        _remove_tag_folder(ckpt_dir, torn, say)


def torn_tags(ckpt_dir: str, before: str) -> list[str]:
    """``step_*`` folders older than ``before`` without ``COMPLETE`` (not links): saves that failed."""
    return sorted(t for t in os.listdir(ckpt_dir) if _TAG.match(t) and t < before
                  and not os.path.islink(os.path.join(ckpt_dir, t)) and os.path.isdir(os.path.join(ckpt_dir, t))
                  and not os.path.isfile(os.path.join(ckpt_dir, t, COMPLETE)))


def _remove_tag_folder(ckpt_dir: str, tag: str, say=print) -> None:
    """Delete a checkpoint folder of this run; a symbolic link is left alone (its target is not ours)."""
    path = os.path.join(ckpt_dir, tag)
    if os.path.islink(path):
        say(f"[mawstron] not deleting {path}: it is a symbolic link (to {os.readlink(path)}); remove it yourself")
        return
    shutil.rmtree(path, ignore_errors=True)


def discard(ckpt_dir: str, tag: str) -> None:
    """Remove checkpoint ``tag``; ``latest`` is re-pointed at the newest other complete checkpoint first (or
    removed), so it never names a folder being deleted.  A symbolic link is refused (ValueError)."""
    if os.path.islink(os.path.join(ckpt_dir, tag)):
        raise ValueError(f"{os.path.join(ckpt_dir, tag)} is a symbolic link, not a checkpoint of this run; remove "
                         f"the link (or move it away) and run again")
    others = [t for t in complete_tags(ckpt_dir) if t != tag]
    latest = os.path.join(ckpt_dir, LATEST)
    if others:
        write_atomic(latest, others[-1])
    elif os.path.isfile(latest):
        os.remove(latest)
    complete = os.path.join(ckpt_dir, tag, COMPLETE)
    if os.path.isfile(complete):
        os.remove(complete)  # incomplete from here on, whatever happens to the rest
    shutil.rmtree(os.path.join(ckpt_dir, tag), ignore_errors=True)


def resolve_tag(ckpt_dir: str, tag: str | None = None) -> str:
    """The checkpoint to load: ``tag`` if given, else the one ``latest`` names; it must be complete.

    If ``latest`` names an incomplete checkpoint (written by something other than this trainer), fall back to
    the newest complete one rather than load a torn save."""
    if tag is None:
        latest = os.path.join(ckpt_dir, LATEST)
        if not os.path.isfile(latest):
            raise FileNotFoundError(
                f"no checkpoint to resume from: {latest} does not exist (train without --resume first, or point "
                f"checkpoint.dir at the run's checkpoint folder)"
            )
        with open(latest) as f:
            tag = f.read().strip()
        _refuse_link(ckpt_dir, tag)
        if not is_complete(ckpt_dir, tag):
            done = complete_tags(ckpt_dir)
            if not done:
                raise FileNotFoundError(f"{ckpt_dir}: 'latest' names {tag!r}, which is incomplete, and no complete checkpoint exists")
            tag = done[-1]
    else:
        _refuse_link(ckpt_dir, tag)
        if not is_complete(ckpt_dir, tag):
            raise FileNotFoundError(f"checkpoint {os.path.join(ckpt_dir, tag)} is missing or incomplete (no {COMPLETE} "
                                    f"marker)")
    return tag


def _refuse_link(ckpt_dir: str, tag: str) -> None:
    path = os.path.join(ckpt_dir, tag)
    if os.path.islink(path):
        raise FileNotFoundError(f"checkpoint {path} is a symbolic link (to {os.readlink(path)}); mawstron loads and "
                                f"prunes only its own folders: copy the checkpoint in instead of linking it")


def read_marker(ckpt_dir: str, tag: str) -> dict:
    """What rank 0 recorded when it completed ``tag``: step, world size, time."""
    with open(os.path.join(ckpt_dir, tag, COMPLETE)) as f:
        return json.load(f)


def read_run_config(ckpt_dir: str, tag: str | None = None) -> dict:
    tag = resolve_tag(ckpt_dir, tag)
    with open(os.path.join(ckpt_dir, tag, RUN_CONFIG)) as f:
        return json.load(f)


# ----------------------------------------------------------------------------------------------- RNG
def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int) -> None:
    """Fresh torch / NumPy / Python RNG streams from ``seed`` (resume on another world size)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# ----------------------------------------------------------------------------------------------- consolidation
def is_zero_checkpoint_dir(path: str) -> bool:
    return os.path.isdir(path) and (os.path.isfile(os.path.join(path, LATEST)) or bool(complete_tags(path)))


def find_checkpoint_dir(path: str) -> str | None:
    """``path`` if it is a checkpoint folder (holding ``latest`` or a complete ``step_*``), ``path/checkpoints`` if
    ``path`` is a run folder holding one, else None."""
    for candidate in (path, os.path.join(path, "checkpoints")):
        if is_zero_checkpoint_dir(candidate):
            return candidate
    return None


def read_zero_checkpoint(ckpt_dir: str, tag: str | None = None) -> dict[str, torch.Tensor]:
    """The full fp32 model state dict of a ZeRO checkpoint, merged from every rank's shards on the CPU (no GPUs,
    no process group); every file is read with ``weights_only=True`` and DeepSpeed's allow-list unless the user
    said ``--trust-checkpoint`` (raises ``trust.UntrustedCheckpoint``, one line)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag = resolve_tag(ckpt_dir, tag)
    try:
        with restricted_loads():  # a folder from elsewhere may not run code here (checkpoints/trust.py)
            return get_fp32_state_dict_from_zero_checkpoint(ckpt_dir, tag=tag, exclude_frozen_parameters=False)
    except UntrustedCheckpoint:
        raise  # its own one line, naming the global and --trust-checkpoint
    except (pickle.UnpicklingError, EOFError, KeyError, RuntimeError, ValueError, OverflowError, TypeError,
            AttributeError, IndexError) as e:  # shards DeepSpeed cannot merge (damaged, or not its files)
        raise ValueError(f"checkpoint {os.path.join(ckpt_dir, tag)} cannot be merged ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160] if str(e) else 'no detail'}): a shard is damaged or not "
                         f"DeepSpeed's; `mawstron checkpoints verify --checkpoint {ckpt_dir}` checks them, --tag "
                         f"picks another") from None
