"""The Ray engine of the data jobs (jobs.py): one Ray task per shard, on a local Ray or on a cluster.

``address`` (``--ray-address``, else ``RAY_ADDRESS``) joins a running cluster (``ray start --head`` on one node,
``ray start --address HEAD:6379`` on the others; every node needs mawstron installed and the shards reachable,
e.g. on s3://).  Without one, a local Ray with ``workers`` CPUs (0: every core) is started and shut down after the
job.  This is the only module that imports Ray.
"""

from __future__ import annotations

import os
import socket

import ray

PROBE_TIMEOUT_S = 5.0


def _probe(address: str) -> None:
    """A plain TCP connect to HOST:PORT first: ray.init retries an address that does not answer for minutes."""
    host_port = address.split("://", 1)[-1]
    if host_port == "auto" or ":" not in host_port:
        return
    host, port = host_port.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S):
            pass
    except (OSError, ValueError) as e:
        raise ValueError(f"--ray-address {address!r}: no Ray cluster answers ({e}); start one with `ray start --head` "
                         f"or leave --ray-address and RAY_ADDRESS unset to run on a local Ray") from None


def _connect(address: str, workers: int) -> bool:
    """Connect or start; True when this call started (and so must stop) Ray."""
    if ray.is_initialized():
        return False
    quiet = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address:
        _probe(address)
        try:
            ray.init(address=address, **quiet)
        except Exception as e:  # ConnectionError, RuntimeError, TimeoutError, ValueError, depending on the failure
            raise ValueError(f"--ray-address {address!r}: no Ray cluster answers ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:160] if str(e) else ''}); start one with `ray start --head` "
                             f"or leave --ray-address and RAY_ADDRESS unset to run on a local Ray") from None
        return True
    ray.init(num_cpus=workers or None, **quiet)
    return True


def _apply(fn, item):
    return fn(item)


def run_tasks(fn, items: list, *, workers: int = 0, address: str = "", progress=None) -> list:
    address = address or os.environ.get("RAY_ADDRESS", "")
    saved = os.environ.pop("RAY_ADDRESS", None) if not address else None  # an empty RAY_ADDRESS confuses ray.init
    started = _connect(address, workers)
    try:
        task = ray.remote(num_cpus=1, max_retries=3)(_apply)  # fn may be a functools.partial
        fn_ref = ray.put(fn)
        refs = [task.remote(fn_ref, item) for item in items]
        position = {ref: k for k, ref in enumerate(refs)}
        out: list = [None] * len(refs)
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                out[position[ref]] = ray.get(ref)
                if progress is not None:
                    progress.update(out[position[ref]])
        return out
    finally:
        if started:
            ray.shutdown()
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved
