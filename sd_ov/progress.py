"""Progress reporting for long work (export, compile, optimize).

A progress function receives a short message and the fraction done (0..1). It is also the
cancellation point: a function that raises `Cancelled` stops the work, and the callers make
sure nothing half-written is left behind.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

ProgressFn = Callable[[str, float], None]


def silent(message: str, fraction: float) -> None:
    """A progress function that reports nothing."""


def console(message: str, fraction: float) -> None:
    """Progress on stderr, one line per step."""
    print(f"[sd-ov {fraction:4.0%}] {message}", file=sys.stderr, flush=True)


def scaled(progress: ProgressFn, start: float, end: float) -> ProgressFn:
    """Map a sub-task's 0..1 onto [start, end] of the caller's progress."""

    def report(message: str, fraction: float) -> None:
        progress(message, start + (end - start) * min(max(fraction, 0.0), 1.0))

    return report
