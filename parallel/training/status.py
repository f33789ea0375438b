"""``<run_dir>/status.json``: where a run is, rewritten atomically at every logged step and state change.

A cluster monitor reads it without touching the run: ``state`` (running / saving / preempted / interrupted (Ctrl-C) / failed / done),
step of total, elapsed and ETA, last loss, images/s, last complete checkpoint, and ``updated`` (a Unix time): a
file that stops ageing while ``state`` says running means a hung run.
"""

from __future__ import annotations

import json
import os
import time

STATES = ("starting", "running", "saving", "preempted", "interrupted", "failed", "done")
STATUS_FILE = "status.json"


class StatusFile:
    """Rank 0's status writer (a no-op on other ranks).  ETA is measured over the steps of this process: the
    first step (compilation) is left out once there are later ones."""

    def __init__(self, run_dir: str, total_steps: int, enabled: bool):
        self.path = os.path.join(run_dir, STATUS_FILE)
        self.enabled = enabled
        self.total_steps = total_steps
        self.started = time.time()
        self.fields: dict = {"state": "starting", "step": 0, "total": total_steps, "last_loss": None,
                             "images_per_s": None, "last_checkpoint": None}
        self.start_step = 0  # the step this process started from (resume)
        self._first_step: tuple[int, float] | None = None  # (step, time) when this process's first step ended

    def elapsed_s(self) -> float:
        return time.time() - self.started

    def eta_s(self, step: int) -> float | None:
        if self._first_step is None:
            return None
        first, at = self._first_step
        if step > first:
            per_step = (time.time() - at) / (step - first)
        else:
            per_step = (at - self.started) / max(step - self.start_step, 1)
        return per_step * max(self.total_steps - step, 0)

    def step_done(self, step: int) -> None:
        if self._first_step is None:
            self._first_step = (step, time.time())

    def update(self, **fields) -> None:
        if "state" in fields and fields["state"] not in STATES:
            raise ValueError(f"status state {fields['state']!r} is not one of {STATES}")
        self.fields.update(fields)
        if not self.enabled:
            return
        step = self.fields["step"]
        record = {**self.fields, "elapsed_s": round(self.elapsed_s(), 3), "eta_s": self.eta_s(step),
                  "updated": time.time(), "pid": os.getpid()}
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        tmp = f"{self.path}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, self.path)  # readers see the old file or the new one, never half of one


def read_status(run_dir: str) -> dict:
    with open(os.path.join(run_dir, STATUS_FILE)) as f:
        return json.load(f)
