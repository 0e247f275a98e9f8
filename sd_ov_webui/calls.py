"""One UNet call of a job: on OpenVINO, or on torch with its reason counted in the job's record
(said once per job). ControlNet's calls come here too (`controlnet.Server`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from modules import shared

from sd_ov import NonFiniteOutputError, UnsupportedCallError

from .controlnet import TorchServes
from .progress import webui_progress

log = logging.getLogger("sd_ov")


class UNetCalls:
    """The per-call half of `serving.JobServing` (its state: served, record, weights, reasons)."""

    def dispatch(self, x, timesteps, context, args: tuple, kwargs: dict, torch_call: Callable[[], Any]):
        """One UNet call of the host: on OpenVINO, or `torch_call()` with the reason counted."""
        reason = self.job_torch_reason or self.unavailable
        extra, y = [], ()  # the common call has none: nothing to build
        if args or kwargs:
            named = {k: v for k, v in kwargs.items() if v is not None}
            if self.served is not None and self.served.takes_y and "y" in named:  # SDXL's vector
                y = (named.pop("y"),)
            extra = [f"#{i}" for i in range(len(args))] + list(named)
        if self.served is None:
            reason = reason or "the OpenVINO UNet is not loaded"
        elif extra:
            reason = f"extra UNet inputs ({', '.join(extra)}) that the compiled UNet does not take"
        elif self.served.takes_y and not y:
            reason = "this UNet takes a vector conditioning (y) and the call gave none"
        elif reason is None:
            try:
                return self.serve_call(x, timesteps, context, y)
            except TorchServes as err:
                reason = str(err)
        self.torch_serves(reason)
        return torch_call()

    def serve_call(self, x, timesteps, context, y: tuple = (), control: list | tuple = ()):
        """One UNet call on OpenVINO; TorchServes with the reason when torch must make it."""
        try:
            if not self.sampled:
                self.sampled = True
                self.sampling_starts()
            started = time.perf_counter()
            out = self.served(x, timesteps, context, *y, control=control)
            self.record.served(started, time.perf_counter())
            return out
        except UnsupportedCallError as err:  # this call only (e.g. an odd shape)
            reason = str(err)
        except NonFiniteOutputError as err:  # this job's remaining calls go to torch
            reason = self.job_torch_reason = str(err)
        except Exception as err:
            self.use_torch(err)
            reason = self.unavailable
        raise TorchServes(reason)

    def torch_serves(self, reason: str) -> None:
        """Torch makes this call: counted with its reason (said once per job), weights back."""
        if self.record.fell_back(reason):
            shared.state.textinfo = f"OpenVINO: torch serves: {reason}"
            log.info("sd-ov: torch serves: %s", reason)
        if self.weights is not None:
            self.weights.ensure(webui_progress)  # freed while OpenVINO served

    def controlnet_reason(self) -> str | None:
        """Why torch serves ControlNet's next call; None: OpenVINO does (controlnet.Server)."""
        reason = self.job_torch_reason or self.unavailable
        if self.served is None:
            return reason or "the OpenVINO UNet is not loaded"
        if not self.served.with_control:
            return reason or "the OpenVINO UNet was not opened with ControlNet's inputs"
        return reason

    def serve_controlled(self, x, timesteps, context, y, residuals):
        """One ControlNet call: the UNet with the units' residuals on OpenVINO (controlnet.Server)."""
        if self.served.takes_y and y is None:
            raise TorchServes("this UNet takes a vector conditioning (y) and the call gave none")
        return self.serve_call(x, timesteps, context, (y,) if self.served.takes_y else (), residuals)

    def control_models_served(self, params):
        """ControlNet's units' control models on OpenVINO around one call (controlnet.Server)."""
        settings = self.served.settings
        return self.control_models.serving(params, settings.device, settings.precision)
