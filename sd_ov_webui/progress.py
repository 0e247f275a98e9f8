"""Engine progress in the webui: the progress area and the console, and which work Interrupt may
cancel. Only long work the user started (an export, Optimize) is cancelled; what a job needs to
finish (a compile, a decode, torch weights read back) always runs, since the webui decodes an
interrupted job's partial latent and returns that picture."""

from __future__ import annotations

import time

from modules import shared

from sd_ov import Cancelled


def webui_progress(message: str, fraction: float) -> None:
    """Reports; never cancels."""
    shared.state.textinfo = f"OpenVINO: {message}"
    print(f"[sd-ov] {message}")


def cancellable_progress(message: str, fraction: float) -> None:
    """Reports, and raises Cancelled once the user pressed Interrupt: nothing is written, and
    torch serves the job."""
    webui_progress(message, fraction)
    if shared.state.interrupted:
        raise Cancelled("interrupted by the user")


def with_progress_bar(progress_bar):
    """`cancellable_progress` that also moves a gradio progress bar (the tab's and the accordion's
    long buttons), with the time left as measured so far. The bar only moves forward: work inside
    a stage (a text encoder freed for a calibration picture) reports its own 0..1, which would
    send the bar back to 0 % with its message."""
    started = time.monotonic()
    furthest = 0.0

    def progress(message: str, fraction: float) -> None:
        nonlocal furthest
        fraction = furthest = max(furthest, fraction)
        if progress_bar is not None:
            elapsed = time.monotonic() - started
            left = elapsed * (1 - fraction) / fraction if 0.02 < fraction < 1 and elapsed > 10 else None
            progress_bar(fraction, desc=message + (f" (about {time_left(left)} left)" if left else ""))
        cancellable_progress(message, fraction)

    return progress


def time_left(seconds: float) -> str:
    return f"{round(seconds / 60)} min" if seconds >= 90 else f"{max(1, round(seconds))} s"
