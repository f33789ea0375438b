"""DeepSpeed hostfiles, checked before any rank starts.

The DeepSpeed launcher reads ``--hostfile F`` (one line per node: ``HOST slots=GPUS``, ``#`` comments) and, when
``F`` does not exist, only warns and trains on the local node: a run meant for 32 nodes would run on one and the
user would learn it from the step time.  ``mawstron train --hostfile F`` reads the file itself first (with
DeepSpeed's own parser) and refuses a missing or malformed one, a ``--gpus`` that is more than a node offers, and a
world size the global batch does not divide.  When a recipe is started as ``deepspeed --hostfile F recipes/x.py``,
each rank looks for that launcher among its ancestor processes (it is there when the launcher fell back to the
local node) and refuses to train when ``F`` is missing or malformed.
"""

from __future__ import annotations

import os
from collections import OrderedDict

# absolute: the README command test runs this `python -m` module by its path (runpy.run_path)
from mawstron.parallel.console import quiet_third_party

EXAMPLE = "one line per node, `HOST slots=GPUS` (e.g. `node001 slots=8`)"


class HostfileError(ValueError):
    """The hostfile is missing, malformed or disagrees with the run; the message names the file and the fix."""


def read_hostfile(path: str) -> "OrderedDict[str, int]":
    """host -> slots, parsed by DeepSpeed's own hostfile parser; HostfileError with a one-line message."""
    from deepspeed.launcher.runner import _parse_hostfile

    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        raise HostfileError(f"hostfile {path} {what} (the DeepSpeed launcher would train on this node alone); "
                            f"give an existing file with {EXAMPLE}")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as e:
        raise HostfileError(f"hostfile {path} cannot be read ({e}); give a text file with {EXAMPLE}") from None
    import logging

    ds_logger = logging.getLogger("DeepSpeed")
    level = ds_logger.level
    ds_logger.setLevel(logging.CRITICAL)  # its own ERROR line repeats the whole file; ours names the line
    try:
        pool = _parse_hostfile(lines)
    except ValueError as e:
        bad = next((f"line {i}: {line.strip()!r}" for i, line in enumerate(lines, 1)
                    if line.strip() and not line.strip().startswith("#") and str(line.strip()) in str(e)), None)
        detail = bad or str(e).split(",")[0]
        raise HostfileError(f"hostfile {path} is not in DeepSpeed's format ({detail}); write {EXAMPLE}") from None
    finally:
        ds_logger.setLevel(level)
    empty = [host for host, slots in pool.items() if slots < 1]
    if empty:
        raise HostfileError(f"hostfile {path} gives {empty[0]} slots=0; every node needs slots=GPUS >= 1")
    return pool


def world_size(pool: "OrderedDict[str, int]", gpus_per_node: int = 0, path: str = "the hostfile") -> int:
    """Ranks the launcher starts from ``pool`` (``--num_gpus`` trims every node to that many GPUs);
    HostfileError when a node has fewer slots than ``gpus_per_node``."""
    if gpus_per_node:
        short = {host: slots for host, slots in pool.items() if slots < gpus_per_node}
        if short:
            host, slots = next(iter(short.items()))
            raise HostfileError(
                f"--gpus {gpus_per_node} asks for more GPUs per node than {path} gives {host} (slots={slots}); "
                f"give --gpus {min(pool.values())} or fewer, or drop --gpus to use every slot")
        return gpus_per_node * len(pool)
    return sum(pool.values())


def describe(pool: "OrderedDict[str, int]", world: int) -> str:
    nodes = len(pool)
    if world % nodes == 0 and all(slots >= world // nodes for slots in pool.values()):
        return f"{nodes} node{'s' if nodes != 1 else ''} x {world // nodes} GPUs = {world} ranks"
    return f"{nodes} nodes, {world} ranks"


# ------------------------------------------------------------------------------------------ on the ranks
def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [w.decode(errors="replace") for w in f.read().split(b"\0") if w]
    except OSError:
        return []


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _runner_hostfile(words: list[str]) -> str | None:
    """The ``--hostfile`` given explicitly to a ``deepspeed`` runner command line, read with the runner's own
    parser (None when none is given, or when ``words`` is not the runner)."""
    starts = [i for i, w in enumerate(words) if os.path.basename(w) in ("deepspeed", "ds")
              or w == "deepspeed.launcher.runner"]
    if not starts:
        return None
    rest = words[starts[0] + 1:]
    import contextlib
    import io

    from deepspeed.launcher.runner import parse_args

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args = parse_args(rest)
    except SystemExit:
        return None
    own = rest[:rest.index(args.user_script)] if args.user_script in rest else rest
    explicit = any(w == "-H" or (len(w) > 5 and "--hostfile".startswith(w.split("=")[0])) for w in own)
    return args.hostfile if explicit else None


def launcher_hostfile(max_depth: int = 6) -> str | None:
    """The hostfile given to the ``deepspeed`` runner this process descends from, as an absolute path (None when
    no ancestor is a runner with ``--hostfile``; Linux ``/proc`` only)."""
    pid = os.getppid()
    for _ in range(max_depth):
        if pid <= 1:
            return None
        path = _runner_hostfile(_cmdline(pid))
        if path is not None:
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                cwd = os.getcwd()
            return os.path.join(cwd, os.path.expanduser(path))
        pid = _parent(pid)
    return None


def check_launcher_hostfile() -> None:
    """On a rank: refuse to train when the runner was given a hostfile that is missing or malformed (it fell back
    to this node alone, or would have refused); HostfileError naming the file."""
    path = launcher_hostfile()
    if path is not None:
        read_hostfile(path)


# ------------------------------------------------------------------------------------------ Slurm
def expand_nodelist(nodelist: str) -> list[str]:
    """Slurm's compact node list (``node[001-003,007],gpu12``) as host names, in order; what
    ``scontrol show hostnames`` prints (used where scontrol is not at hand)."""
    import re

    hosts, depth, token = [], 0, ""
    for ch in nodelist + ",":
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            if token:
                hosts.extend(_expand_one(token, re))
            token = ""
        else:
            token += ch
    return hosts


def _expand_one(token: str, re) -> list[str]:
    match = re.fullmatch(r"([^\[]*)\[([^\]]+)\](.*)", token)
    if not match:
        return [token]
    head, body, tail = match.groups()
    out = []
    for part in body.split(","):
        lo, _, hi = part.partition("-")
        width = len(lo)
        for i in range(int(lo), int(hi or lo) + 1):
            out.extend(_expand_one(f"{head}{i:0{width}d}{tail}", re))
    return out


def slurm_hosts() -> list[str]:
    """The job's nodes: ``scontrol show hostnames`` of ``SLURM_JOB_NODELIST`` (or its own expansion)."""
    import subprocess

    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        raise HostfileError("SLURM_JOB_NODELIST is not set: run this inside a Slurm job (sbatch/salloc)")
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=60, check=True).stdout.split()
        if out:
            return out
    except (OSError, subprocess.SubprocessError):
        pass
    return expand_nodelist(nodelist)


def write_slurm_hostfile(path: str, gpus_per_node: int = 0) -> "OrderedDict[str, int]":
    """Write the Slurm job's hostfile (``HOST slots=GPUS``, GPUs from ``SLURM_GPUS_ON_NODE``) and return it as
    read back by DeepSpeed's parser."""
    gpus = gpus_per_node or int(os.environ.get("SLURM_GPUS_ON_NODE", "0").split("(")[0] or 0)
    if gpus < 1:
        raise HostfileError("GPUs per node unknown: request them with #SBATCH --gpus-per-node=N (Slurm then sets "
                            "SLURM_GPUS_ON_NODE) or pass GPUS_PER_NODE=N")
    hosts = slurm_hosts()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(f"{host} slots={gpus}\n" for host in hosts))
    return read_hostfile(path)


def world_info(pool: "OrderedDict[str, int]") -> str:
    """DeepSpeed's ``--world_info`` for its per-node launcher (``deepspeed.launcher.launch``): every slot of
    every host, encoded as the runner encodes it."""
    from deepspeed.launcher.runner import encode_world_info

    return encode_world_info({host: list(range(slots)) for host, slots in pool.items()})


def main(argv: list[str] | None = None) -> int:
    """``python -m mawstron.parallel.launcher.hostfile slurm HOSTFILE`` (write the job's hostfile, print its summary) or
    ``world-info HOSTFILE`` (print DeepSpeed's --world_info); used by recipes/slurm.sh."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m mawstron.parallel.launcher.hostfile", description=main.__doc__)
    p.add_argument("action", choices=("slurm", "world-info", "check"))
    p.add_argument("hostfile")
    p.add_argument("--gpus-per-node", type=int, default=0)
    args = p.parse_args(argv)
    quiet_third_party()  # DeepSpeed's import-time notices would mix into the printed --world_info
    try:
        if args.action == "slurm":
            pool = write_slurm_hostfile(args.hostfile, args.gpus_per_node)
            print(f"{args.hostfile}: {describe(pool, world_size(pool))}", file=sys.stderr)
        elif args.action == "world-info":
            print(world_info(read_hostfile(args.hostfile)))
        else:
            pool = read_hostfile(args.hostfile)
            print(world_size(pool, args.gpus_per_node, args.hostfile))
    except HostfileError as e:
        print(f"mawstron: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
