"""Child processes that take their own children with them: a launcher or converter started here runs in its own
process group, and a timeout, an error or Ctrl-C here ends the whole group (the ranks a launcher started too),
not only the process we started."""

from __future__ import annotations

import os
import signal
import subprocess

GRACE_S = 10  # after SIGTERM, before SIGKILL (a launcher forwards SIGTERM to its ranks)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_group(cmd: list[str], timeout_s: float | None, grace_s: float = GRACE_S, **popen_kwargs):
    """``subprocess.run(cmd, timeout=timeout_s)`` with ``cmd`` as the leader of a new process group; on a timeout
    (``subprocess.TimeoutExpired``, re-raised) or any exception here the group gets SIGTERM, then SIGKILL after
    ``grace_s``.  Returns a CompletedProcess."""
    proc = subprocess.Popen(cmd, start_new_session=True, **popen_kwargs)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except BaseException:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(proc.pid, signal.SIGKILL)  # the leader may be gone while its ranks are not
        proc.wait()
        raise
    # the leader ended: anything it left in its group (a rank that outlived its launcher) goes too
    _signal_group(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
