"""What the VAE and the text encoder on OpenVINO share: methods of one webui module served by
OpenVINO (set on the instance, whatever was there put back on detach), the module's torch
weights freed while they are, and a per-job account for the infotext.

Any failure runs that call on torch (weights read back first) and says why; a job never fails.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

import torch

from sd_ov import trim_heap

from .offload import WebuiWeights

log = logging.getLogger("sd_ov")


class ServedComponent:
    """Subclasses name `methods` and define `_<method>` for each; `self.ov` is their OpenVINO model
    (with `release()`), `self.weights` the torch weights that may leave memory."""

    methods: tuple[str, ...] = ()
    what = "component"

    def __init__(self, module: torch.nn.Module, progress) -> None:
        self.module = module
        self.progress = progress
        self.ov = None
        self.weights: WebuiWeights | None = None
        self.saved: dict[str, object] = {}
        self.calls: dict[str, int] = {}
        self.seconds: dict[str, float] = {}  # this job's seconds per served method, for the console
        self.torch_reason: str | None = None

    def attach(self) -> None:
        if self.saved:
            return
        for name in self.methods:
            self.saved[name] = vars(self.module).get(name)  # e.g. the webui's lowvram wrapper
            setattr(self.module, name, getattr(self, f"_{name}"))

    def torch_method(self, name: str) -> Callable:
        """The module's own method (what was there before us), its weights in memory."""
        if self.weights is not None:
            self.weights.ensure(self.progress)
        saved = self.saved.get(name)
        return saved if saved is not None else getattr(type(self.module), name).__get__(self.module)

    def start_job(self, release_torch: bool) -> None:
        self.calls, self.seconds, self.torch_reason = {}, {}, None
        if self.weights is None:
            return
        if release_torch:
            self.weights.release(self.progress)
        else:
            self.weights.ensure(self.progress)

    def served(self, name: str, run: Callable[[], torch.Tensor]) -> torch.Tensor | None:
        """`run()`'s output, or None (and the reason kept) when it failed or was not finite."""
        try:
            started = time.perf_counter()
            out = run()
            if not bool(torch.isfinite(out).all()):
                raise ValueError(f"the OpenVINO {self.what} returned NaN/inf")
            self.calls[name] = self.calls.get(name, 0) + 1
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
            return out
        except Exception as err:
            self.on_torch(f"{type(err).__name__}: {err}")
            return None

    def on_torch(self, reason: str) -> None:
        if reason != self.torch_reason:
            log.warning("sd-ov: %s on torch: %s", self.what, reason)
        self.torch_reason = reason

    def infotext(self) -> str | None:
        """What OpenVINO served in this job (e.g. `decode, encode`), or why torch did."""
        if self.torch_reason:
            return f"torch ({self.torch_reason})"
        return ", ".join(self.calls) or None

    def after_phase(self, keep_compiled: bool) -> None:
        """Its part of the job is done: the compiled model's buffers go back and the model stays
        (`release`: the next job compiles nothing), or the model goes too (`lowvram`)."""
        if self.ov is None:
            return
        if keep_compiled:
            self.ov.release_memory()
        else:
            self.ov.drop_compiled()
            gc.collect()
        trim_heap()

    def detach(self) -> None:
        """The webui's own methods and torch weights back, the OpenVINO model's memory given back."""
        for name, saved in self.saved.items():
            if saved is None:
                vars(self.module).pop(name, None)
            else:
                setattr(self.module, name, saved)
        self.saved = {}
        if self.weights is not None:
            self.weights.ensure(self.progress)
        if self.ov is not None:
            self.ov.release()
            self.ov = None
