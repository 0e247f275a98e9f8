"""The "SD Unet" of AUTOMATIC1111's webui (`modules.sd_unet`): activated when an OpenVINO option is
chosen, it serves the webui's UNet calls through `serving.JobServing`, and gives the torch UNet
back when deactivated.

An option is bound to its checkpoint. Chosen while another checkpoint is loaded, it serves that
checkpoint's own entry of the same recipe and says so, or refuses with a message: it never
serves one checkpoint's weights under another's label.

A fallback costs the job it happens in only: whatever fails while opening or serving, torch makes
that job, what OpenVINO held is given back, and the next job opens again from a clean state (a
model the engine does not support is the one lasting refusal).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from modules import sd_unet, shared

from sd_ov import JobRecord, Recipe, UNetSource, describe

from . import controlnet
from .checkpoints import checkpoint_identity
from .companions import Companions
from .controlnet import TorchServes
from .errors import explain
from .lora import networks_set_aside
from .offload import undo_lora_weights, unet_weights
from .progress import webui_progress
from .recipe_switch import HANDOVER
from .serving import JobServing
from .settings import cache_root, runtime_settings
from .torch_unet import call_torch, unet_calls_to


class OpenVINOUnet(sd_unet.SdUnet, JobServing):
    def __init__(self, option: sd_unet.SdUnetOption) -> None:
        """`option`: the `options.OpenVINOUnetOption` that made it (its checkpoint and recipe)."""
        sd_unet.SdUnet.__init__(self)
        JobServing.__init__(self)
        self.option = option

    @property
    def recipe(self) -> Recipe:
        return self.option.recipe

    def activate(self) -> None:
        """Load the cached OpenVINO UNet of the loaded checkpoint, exporting a plain one on first use."""
        model = shared.sd_model
        unet = model.model.diffusion_model
        self.record = JobRecord()
        # from the option before, at a recipe switch: its freed weights and compiled companions
        self.weights, companions = HANDOVER.take(unet)
        self.companions = companions or self.companions
        try:
            describe(unet)  # refuses SD3, Flux & co before anything is written
        except Exception as err:
            self.source, self.unsupported = UNetSource(cache_root(), "", "", unet), explain(err)
            self.use_torch(err)
            return
        self.open_again()
        self.opened_for_job = True

    def open_again(self) -> None:
        """Bind to the loaded checkpoint (once) and open its OpenVINO UNet with the current
        settings; a failure leaves this job to torch, and the next job calls this again."""
        model = shared.sd_model
        unet = model.model.diffusion_model
        try:
            if self.source is None or not self.source.checkpoint_hash:
                name, sha256 = checkpoint_identity(model.sd_checkpoint_info)
                self.weights = self.weights or unet_weights(unet, model.sd_checkpoint_info.filename)
                self.source = UNetSource(cache_root(), name, sha256, unet, torch_calls=self.torch_computes)
                self.binding_note = self.check_binding(model.sd_checkpoint_info)
            self.open(runtime_settings())
            self.offload()
        except Exception as err:  # any failure: report it, torch makes the picture
            self.source = self.source or UNetSource(cache_root(), "", "", unet)
            self.use_torch(err)

    @contextlib.contextmanager
    def torch_computes(self) -> Iterator[None]:
        """While inside (an export's trace), the torch UNet has its base weights (no LoRA merged in)
        and takes its calls."""
        if self.weights is not None:
            self.weights.ensure(webui_progress)
        with networks_set_aside(), unet_calls_to(None):
            if self.source is not None:
                undo_lora_weights(self.source.unet)
            yield

    def check_binding(self, loaded) -> str | None:
        """A note when the option was made for another checkpoint than the loaded one."""
        chosen = self.option.checkpoint_info
        if getattr(chosen, "filename", None) == getattr(loaded, "filename", None):
            return None
        return (
            f"{self.option.label} was chosen while {loaded.model_name} is loaded: "
            f"{loaded.model_name}'s own {self.recipe.label()} UNet serves"
        )

    def forward(self, x, timesteps, context, *args, **kwargs):
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
        return call_torch(
            self.source.unet if self.source else shared.sd_model.model.diffusion_model,
            x,
            timesteps,
            context,
            *args,
            **kwargs,
        )

    def deactivate(self) -> None:
        """The webui takes its UNet back (another option, or a checkpoint loading into it)."""
        if self.source is not None:
            controlnet.uninstall(self.source.unet)  # ControlNet's calls go to torch again
        self.release()
        self.control_models.release()
        if self.source is None or not HANDOVER.leave(self.source.unet, self.weights, self.companions):
            self.companions.drop()
            if self.weights is not None:
                self.weights.ensure(webui_progress)
        self.weights, self.companions = None, Companions()
        self.source = None  # the torch UNet is the webui's again; keep no reference to it
