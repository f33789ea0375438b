"""argparse types shared by the ``mawstron`` commands and the scripts the launcher starts: numbers are checked
when the command line is parsed, so a bad one is a usage error (exit 2) naming the option, never a traceback."""

from __future__ import annotations

import argparse


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    """1 or more."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return value


def nonnegative_int(text: str) -> int:
    """0 or more."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


def positive_int_list(text: str) -> tuple[int, ...]:
    """``1,5,10`` -> (1, 5, 10): comma-separated whole numbers of 1 or more, at least one."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"{text!r} names no number; give e.g. 1,5,10")
    values = []
    for item in items:
        try:
            values.append(positive_int(item))
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"{item!r} in {text!r}: {e}; give whole numbers of 1 or more, e.g. 1,5,10"
                                             ) from None
    return tuple(dict.fromkeys(values))
