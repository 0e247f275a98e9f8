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
from .errors import explain
from .lora import UNetLora, networks_set_aside, unet_lora
from .offload import undo_lora_weights, unet_weights
from .plan import HostReading
from .progress import webui_progress
from .recipe_switch import HANDOVER
from .serving import JobServing
from .settings import cache_root, runtime_settings
from .torch_patches import unet_notes, unet_refusal
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

    def read_job(self, unet, first_pass: bool) -> HostReading:
        """A1111's: the Lora extension's networks, sd-webui-controlnet's hook, the webui's per-job
        patches of torch modules (Tiling, hypernetworks, Hypertile)."""
        return HostReading(
            unet_lora(unet) if unet is not None else UNetLora(),
            controlnet.job_hook(unet, self.record),
            unet_refusal(unet),
            unet_notes(hires_pass=not first_pass),
        )

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

    def bound_elsewhere(self, sd_model) -> bool:
        """A1111 applies the SD Unet again around every checkpoint load: never stale here."""
        return False

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
        """The webui's hijacked `UNetModel.forward` calls this for every denoiser call."""
        torch_unet = self.source.unet if self.source else shared.sd_model.model.diffusion_model
        return self.dispatch(
            x,
            timesteps,
            context,
            args,
            kwargs,
            lambda: call_torch(torch_unet, x, timesteps, context, *args, **kwargs),
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
        self.weights, self.companions = None, type(self.companions)()
        self.source = None  # the torch UNet is the webui's again; keep no reference to it
