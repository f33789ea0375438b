"""What reaches the console: DeepSpeed's INFO lines and known third-party FutureWarnings are hidden unless
``--verbose`` (or ``MAWSTRON_VERBOSE=1``, which the launcher passes on to every rank)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

VERBOSE_ENV = "MAWSTRON_VERBOSE"
# FutureWarnings that third-party code raises on every run and that a user cannot act on
KNOWN_FUTURE_WARNINGS = (
    r"`torch\.distributed\.\w+` is deprecated",  # DeepSpeed's ZeRO collectives call the old names
    r".*torch\.cuda\.amp\.\w+\(args\.\.\.\)` is deprecated",
)


def is_verbose(verbose: bool | None = None) -> bool:
    if verbose is not None:
        return verbose
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet_third_party(verbose: bool | None = None) -> None:
    """Hide DeepSpeed INFO logging and the known FutureWarnings in this process (unless verbose); with
    ``verbose=True`` also ask every child process (the ranks) for the full output."""
    if is_verbose(verbose):
        os.environ[VERBOSE_ENV] = "1"
        return
    for pattern in KNOWN_FUTURE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=FutureWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"deepspeed(\.|$)")
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    if "DS_ACCELERATOR" not in os.environ:
        import torch

        if not torch.cuda.is_available():  # what DeepSpeed would pick, without its warning that it did
            os.environ["DS_ACCELERATOR"] = "cpu"


def launcher_log_args(verbose: bool | None = None) -> list[str]:
    """Arguments for DeepSpeed's ``deepspeed`` runner: its INFO lines only with --verbose."""
    return [] if is_verbose(verbose) else ["--log_level", "warning"]


@contextlib.contextmanager
def stdout_to_stderr():
    """Progress that third-party code prints (DeepSpeed's ZeRO merge, its tqdm bars) must not mix into a
    command's JSON on stdout: it goes to stderr with --verbose, nowhere otherwise."""
    if is_verbose():
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        yield
