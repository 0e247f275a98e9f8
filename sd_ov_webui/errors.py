"""An error in the words the infotext and the progress area use.

The engine's own errors (`SdOvError`) are written for the user already; so are the system's
(`OSError`: a path and what is wrong with it) and OpenVINO's (raised inside the `openvino`
package: a device lost, a compile the device refused). Anything else is a fault in sd-ov or in
what it drives (torch, an extension): the user reads that it happened and what follows, and the
Python error with its traceback goes to the console (`unexpected` tells the caller to log it)."""

from __future__ import annotations

import logging
import os

from sd_ov import Cancelled, SdOvError

log = logging.getLogger("sd_ov")


def raised_by_openvino(err: BaseException) -> bool:
    """True when the error came out of OpenVINO's own code (its Python API's frames)."""
    tb = err.__traceback__
    while tb is not None:
        if f"{os.sep}openvino{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def openvino_message(err: BaseException) -> str:
    """OpenVINO's message without the `Exception from src/...cpp:N:` lines it stacks above it."""
    lines = [line.strip() for line in str(err).splitlines()]
    said = [line for line in lines if line and not line.startswith("Exception from ")]
    return " ".join(said) or type(err).__name__


def unexpected(err: BaseException) -> bool:
    """True for an error that is not one a user can read and act on: log it with its traceback."""
    return not isinstance(err, (SdOvError, MemoryError, OSError)) and not raised_by_openvino(err)


def explain(err: BaseException) -> str:
    if isinstance(err, MemoryError):
        return "out of memory while preparing the OpenVINO UNet (nothing was written to the cache)"
    if isinstance(err, (SdOvError, OSError)):
        return str(err)
    if raised_by_openvino(err):
        return f"OpenVINO: {openvino_message(err)}"
    return f"an unexpected error in sd-ov ({type(err).__name__}, details in the console)"


def tell_console(said: tuple[str | None, int], reason: str, err: BaseException) -> tuple[str, int]:
    """Say why OpenVINO is unavailable: a cause once, with the Python error and its traceback where
    it is unexpected; the same cause at a later job once more, with what the user can do; then
    nothing (the infotext says it at every job). `said`: the cause said last and how often; the
    return value is the new one."""
    times = said[1] + 1 if said[0] == reason else 1
    if isinstance(err, Cancelled) or times > 2:
        return reason, times
    if times == 2:
        print(
            f"[sd-ov] OpenVINO unavailable again, for the same cause: {reason}. Each job tries again; "
            "SD Unet 'None' (or the accordion's switch) keeps jobs on torch without trying."
        )
        return reason, times
    log.warning("sd-ov: the torch UNet serves instead: %s", reason)
    print(f"[sd-ov] OpenVINO UNet unavailable, using torch: {reason}")
    if unexpected(err):
        log.error("sd-ov: %s: %s", type(err).__name__, err, exc_info=err)
    return reason, times
