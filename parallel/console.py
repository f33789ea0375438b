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


QUIET_ENV = "MAWSTRON_QUIET"


def show_progress(quiet: bool | None = None) -> bool:
    """Progress bars only where a person watches: the real stderr is a terminal, and neither ``--quiet`` nor
    ``MAWSTRON_QUIET=1``."""
    if quiet or os.environ.get(QUIET_ENV, "") not in ("", "0"):
        return False
    stream = sys.__stderr__
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


def progress(batches, desc: str, total: int | None = None, quiet: bool | None = None):
    """``batches`` (dicts with ``images``) passed through unchanged, with a tqdm bar on the terminal's stderr that
    counts images and shows images/s.  It writes to the real stderr, so it shows through ``stdout_to_stderr``
    (which silences third-party chatter) and never mixes into a command's stdout."""
    if not show_progress(quiet):
        yield from batches
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="img", unit_scale=True, file=sys.__stderr__, dynamic_ncols=True,
              mininterval=0.5) as bar:
        for batch in batches:
            yield batch
            bar.update(len(batch["images"]))
