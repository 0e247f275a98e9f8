"""sd-webui-controlnet's control models on OpenVINO, while its units' residuals go into the
OpenVINO UNet (controlnet.py) and Settings → OpenVINO → "ControlNet's control models through
OpenVINO" is on.

ControlNet's forward calls each unit's `param.control_model(x=, hint=, timesteps=, context=, y=,
control_type=)` (a `PlugableControlModel` around cldm's `ControlNet`). For the length of one of
our calls, the OpenVINO model's forward is set on that instance and taken off after, so nothing
of ours is left on the extension's cached model objects between calls. Each model is exported at
its first use (cached by its weights' digest: the model object does not name its file), kept
compiled across jobs, and its buffers given back after sampling as the UNet's are.

A unit type other than plain ControlNet (Union's control-type input), a model that is not f32,
an export that fails or is interrupted, or a call that fails: that unit's control model runs on
torch, and the infotext says why. The job never fails for it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Iterator
from typing import Any

import torch

from sd_ov import Cancelled, OVControlModel, prepare_control_entry, trim_heap, weights_digest

from .errors import explain
from .progress import cancellable_progress, webui_progress
from .settings import cache_root, opt

log = logging.getLogger("sd_ov")
SERVED_KIND = "ControlNet"  # ControlNet Union's control model takes its control types: torch
ENTRY_NAME = "controlnet"
KEPT = 2  # compiled control models kept across jobs (a job with more units compiles the rest)


class ControlModels:
    """The control models of this UNet's ControlNet jobs on OpenVINO, by weights digest."""

    def __init__(self) -> None:
        # (digest, device, precision, INT8 weights)
        self.models: dict[tuple[str, str, str, bool], OVControlModel] = {}
        self.refused: dict[str, str] = {}  # digest → why torch runs it (export refused or failed)
        self.calls = 0
        self.int8 = False  # this job's served control models have INT8 weights
        self.torch_reasons: list[str] = []

    def start_job(self) -> None:
        self.calls, self.int8, self.torch_reasons = 0, False, []

    @contextlib.contextmanager
    def serving(self, params: list[Any], device: str, precision: str) -> Iterator[None]:
        """Around one of ControlNet's forwards: each served unit's control model calls OpenVINO, on
        the UNet's device at the UNet's precision (the `fastest` preset's bf16 too)."""
        installed = []
        if opt("sd_ov_control_model"):
            for param in params:
                model = getattr(param, "control_model", None)
                ov_model = self._model_for(param, model, device, precision)
                if ov_model is not None and "forward" not in vars(model):
                    model.forward = _OpenVINOForward(self, model, ov_model)
                    installed.append(model)
        try:
            yield
        finally:
            for model in installed:
                vars(model).pop("forward", None)

    def _model_for(self, param: Any, plugable: Any, device: str, precision: str) -> OVControlModel | None:
        kind = getattr(param.control_model_type, "name", str(param.control_model_type))
        inner = getattr(plugable, "control_model", None)
        if kind != SERVED_KIND or not isinstance(inner, torch.nn.Module):
            self.on_torch(f"{kind} units' control models run on torch")
            return None
        digest = weights_digest(inner)
        if digest in self.refused:
            self.on_torch(self.refused[digest])
            return None
        int8 = bool(opt("sd_ov_control_model_int8"))
        key = (digest, device, precision, int8)
        if key not in self.models:
            try:
                entry = prepare_control_entry(
                    inner, cache_root(), ENTRY_NAME, progress=cancellable_progress, int8_weights=int8
                )
                self.models[key] = OVControlModel(
                    entry,
                    device=device,
                    precision=precision,
                    cache_compiled=bool(opt("sd_ov_cache_compiled")),
                    progress=webui_progress,
                )
            except Cancelled as err:  # this job's control model on torch; the next job exports
                self.on_torch(f"export interrupted ({err})")
                return None
            except Exception as err:
                self.refused[digest] = explain(err)
                self.on_torch(self.refused[digest])
                return None
            while len(self.models) > KEPT:
                self.models.pop(next(iter(self.models))).release()
        return self.models[key]

    def failed(self, model: OVControlModel, err: Exception) -> None:
        """An OpenVINO call failed: torch runs this control model from now on."""
        for key, held in list(self.models.items()):
            if held is model:
                self.refused[key[0]] = f"the OpenVINO control model failed: {explain(err)}"
                self.models.pop(key).release()
                self.on_torch(self.refused[key[0]])

    def host_runs(self, reason: str) -> None:
        """The host runs this job's control models itself, and why (said in the infotext only)."""
        if reason not in self.torch_reasons:
            self.torch_reasons.append(reason)

    def on_torch(self, reason: str) -> None:
        if reason not in self.torch_reasons:
            log.warning("sd-ov: ControlNet's control model on torch: %s", reason)
            self.torch_reasons.append(reason)

    def infotext(self) -> str:
        if not opt("sd_ov_control_model"):
            return "control models on torch (off in Settings → OpenVINO)"
        if self.torch_reasons:
            on = "some control models" if self.calls else "control models"
            return f"{on} on torch ({'; '.join(self.torch_reasons)})"
        if not self.calls:
            return "control models on torch"
        return "control models on OpenVINO (INT8 weights)" if self.int8 else "control models on OpenVINO"

    def after_phase(self, keep_compiled: bool) -> None:
        if not self.models:  # a job without ControlNet: no full collection (0.15 s in the tests' process)
            return
        for model in self.models.values():
            if keep_compiled:
                model.release_memory()
            else:
                model.drop_compiled()
        if not keep_compiled:  # the dropped compiled models' last references: collected now
            gc.collect()
        trim_heap()

    def release(self) -> None:
        for model in self.models.values():
            model.release()
        self.models.clear()


class _OpenVINOForward:
    """A PlugableControlModel's forward for one of our calls: OpenVINO, torch if that fails."""

    def __init__(self, owner: ControlModels, plugable: torch.nn.Module, ov_model: OVControlModel) -> None:
        self.owner, self.plugable, self.ov_model = owner, plugable, ov_model

    def __call__(self, *args, **kwargs):
        named = dict(zip(("x", "hint", "timesteps", "context", "y"), args, strict=False)) | kwargs
        try:
            out = self.ov_model(
                named["x"], named["hint"], named["timesteps"], named["context"], named.get("y")
            )
            self.owner.calls += 1
            self.owner.int8 = self.ov_model.entry.manifest.recipe.int8 == "weights"
            return out
        except Exception as err:
            self.owner.failed(self.ov_model, err)
            vars(self.plugable).pop("forward", None)
            return self.plugable(*args, **kwargs)
