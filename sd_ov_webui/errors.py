"""An engine error in the words the infotext and the progress area use."""

from __future__ import annotations

from sd_ov import SdOvError


def explain(err: BaseException) -> str:
    if isinstance(err, MemoryError):
        return "out of memory while preparing the OpenVINO UNet (nothing was written to the cache)"
    return str(err) if isinstance(err, SdOvError) else f"{type(err).__name__}: {err}"
