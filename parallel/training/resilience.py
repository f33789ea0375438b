"""Preemption: a signal on any rank becomes one agreed stop at a step boundary, then a complete checkpoint.

SLURM and Kubernetes announce the end of an allocation with SIGTERM (SLURM: ``--signal=TERM@120`` or
``--signal=USR1@120`` sends it ahead of time); the DeepSpeed launcher forwards SIGTERM to its ranks and SIGKILLs
them about 30 s later.  A rank that saved alone would leave a torn checkpoint, so (as Megatron-LM's
``dist_signal_handler``) every rank only *records* the signal, and at each step boundary one all-reduce of the
flags decides for all of them: they save the same step together and exit with ``EXIT_PREEMPTED``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal

import torch
import torch.distributed as dist

# sysexits.h EX_TEMPFAIL: "temporary failure, the user is invited to retry": a complete checkpoint of the step
# reached was saved, rerun the same command with --resume (the deepspeed launcher itself exits 1 after a signal)
EXIT_PREEMPTED = 75
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """The run stopped on a signal after saving a complete checkpoint."""


class PreemptionHandler:
    """Records SIGTERM / SIGUSR1 on this rank; ``agreed()`` tells every rank whether any rank got one."""

    def __init__(self, signals=PREEMPTION_SIGNALS):
        self.signals = tuple(signals)
        self.received: int | None = None
        self._previous: dict = {}

    def _record(self, signum, frame) -> None:
        self.received = signum

    def __enter__(self) -> PreemptionHandler:
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def agreed(self, device: torch.device) -> bool:
        """True on every rank if any rank received a signal (one all-reduce; every rank calls it at the same
        step boundary)."""
        flag = torch.tensor([1.0 if self.received is not None else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def signal_name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "a signal on another rank"


class InterruptHandler:
    """Ctrl-C (SIGINT) during training: the first one is recorded and ``check()`` raises KeyboardInterrupt at the
    next step boundary; a second one raises at once (Python's default).  Python's own handler raises wherever the
    main thread happens to be, and a KeyboardInterrupt raised inside a finalizer (a DataLoader iterator's
    ``__del__`` at an epoch boundary) is printed as "Exception ignored" and lost.  Recording the signal cannot be
    lost.  A process started with SIGINT ignored (``nohup cmd &`` from a script) keeps ignoring it, as Python
    itself does."""

    def __init__(self):
        self.received = False
        self._previous = None
        self._installed = False

    def _record(self, signum, frame) -> None:
        if self.received:  # the second Ctrl-C: do not wait for the step boundary
            raise KeyboardInterrupt
        self.received = True

    def __enter__(self) -> InterruptHandler:
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self._previous = signal.signal(signal.SIGINT, self._record)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def check(self) -> None:
        if self.received:
            raise KeyboardInterrupt


@contextlib.contextmanager
def signals_held(signals=PREEMPTION_SIGNALS):
    """Block the preemption signals in this thread for the duration of the block (they stay pending and arrive
    when it ends, so nothing is lost: the handler only records them for the next step boundary anyway).

    The trainer fetches every batch inside it because DataLoader workers are forked there: a child inherits the
    blocked mask, so the SIGTERM a cluster sends to the whole process group no longer kills the workers (PyTorch's
    worker handler exits on any SIGTERM) before their rank has saved; they leave when their rank ends the loader,
    or when their watchdog sees the rank gone."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def end_worker_processes(timeout_s: float = 5.0) -> list[int]:
    """Join this process's ``multiprocessing`` children (DataLoader workers) for up to ``timeout_s`` and SIGKILL any
    still alive (a worker holding SIGTERM cannot be terminated): they leave when their rank does.  Returns the pids
    killed."""
    import time

    deadline, killed = time.monotonic() + timeout_s, []
    for child in multiprocessing.active_children():
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            child.kill()
            child.join(1.0)
            killed.append(child.pid)
    return killed
