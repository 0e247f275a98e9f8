"""sd-ov in stable-diffusion-webui-forge (its Forge 2 backend: `backend/`, `modules_forge/`).

Forge keeps A1111's extension API (scripts, settings, tabs, the SD Unet list and its activation)
but its model is its own: the webui's hijack that routed `UNetModel.forward` to the SD Unet is
gone, and the UNet sits in `p.sd_model.forge_objects.unet`, a `UnetPatcher` whose `KModel` does the
predictor's maths around `diffusion_model(x, t, context=..., control=..., transformer_options=...,
y=...)`. So each sampling pass (`process_before_every_sampling`, hires fix's too), a clone of that
patcher gets `diffusion_model` replaced by an object whose calls go to the served OpenVINO UNet,
and is assigned back, as Forge's own extensions patch the UNet (clone, patch, assign back).
Forge unpatches it when another clone of the model is loaded: a torch job after it is torch's.

The export: Forge's UNet class is not ldm's (its attention and skip joins are Forge's code), but
its state dict has ldm's keys; the IR is exported from ldm's class loaded with the checkpoint's
own weights (read from the file only when an export runs), so A1111 and Forge share cache
entries. SD1.x, SD2.x and SDXL base; SDXL's class (sgm) comes from Stability's generative-models,
which Forge does not ship and install.py fetches (`sgm_on_path`).

Forge's LoRAs (low-rank patches on the job's UnetPatcher) go to the OpenVINO UNet's LoRA branch;
its ControlNet units' residuals (`c["control"]`) to the UNet's residual inputs, their control models
staying Forge's. Not served on OpenVINO in Forge yet, each making the job's UNet calls torch's with
the reason: other LoRA kinds, ControlLoRA and T2I-Adapter units, patches other extensions put inside
the UNet (`transformer_options` patches, block modifiers). The torch UNet's weights are freed while
OpenVINO serves and read back before Forge's own UNet runs (its parameters are inference tensors);
its VAE decodes on OpenVINO too (forge_vae.py), its text encoders are its own.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from modules import paths, shared

from sd_ov import (
    JobRecord,
    UNetSource,
    UnsupportedModelError,
    config_for_state_dict,
    is_sgm_config,
    load_unet_from_checkpoint,
)

from .checkpoints import checkpoint_identity
from .controlnet import TorchServes
from .errors import explain
from .forge_patches import INSIDE_THE_UNET, forge_lora, forge_residuals, forge_units, inside_patches
from .forge_vae import ForgeCompanions
from .offload import unet_weights
from .plan import HostReading
from .progress import webui_progress
from .recipe_switch import HANDOVER
from .settings import cache_root, offload_mode, runtime_settings
from .torch_unet import ForgeStandIn
from .unet import OpenVINOUnet

log = logging.getLogger("sd_ov")


def sgm_on_path() -> None:
    """SDXL's UNet class (sgm) importable, or UnsupportedModelError saying how to get it. Forge
    ships no sgm; sd-ov's install.py clones Stability's generative-models into the webui's
    `repositories/` (at the commit A1111 v1.10 pins), as A1111 itself does, and it goes on the
    import path here, once."""
    if importlib.util.find_spec("sgm") is None:
        folder = Path(paths.script_path) / "repositories" / "generative-models"
        if (folder / "sgm").is_dir() and str(folder) not in sys.path:
            sys.path.append(str(folder))
            importlib.invalidate_caches()
    if importlib.util.find_spec("sgm") is None:
        raise UnsupportedModelError(
            "SDXL's UNet class (sgm) is missing: sd-ov's installer puts Stability's generative-models in "
            "repositories/generative-models at the webui's start (it needs internet access once)"
        )


def unet_config(unet: torch.nn.Module) -> dict:
    """The shipped ldm/sgm config of Forge's UNet, from its weights' shapes (nothing is read or
    copied); sgm importable for SDXL, or UnsupportedModelError."""
    config = config_for_state_dict(dict(unet.named_parameters()))
    if is_sgm_config(config):
        sgm_on_path()
    return config


def torch_unet_of(sd_model) -> torch.nn.Module:
    """Forge's own torch UNet of the loaded model, whatever clone last patched `diffusion_model`."""
    unet = sd_model.forge_objects.unet.model.diffusion_model
    return unet.torch_unet if isinstance(unet, ForgeDiffusionModel) else unet


class ForgeDiffusionModel(ForgeStandIn):
    """What Forge's `KModel` calls as its `diffusion_model` while OpenVINO serves."""

    def __init__(self, serving: ForgeUnet, torch_unet: torch.nn.Module) -> None:
        super().__init__(torch_unet)
        self.serving = serving

    def forward(self, x, timesteps=None, context=None, control=None, transformer_options=None, **kwargs):
        def on_torch():
            return self.torch_unet(
                x,
                timesteps,
                context=context,
                control=control,
                transformer_options=transformer_options,
                **kwargs,
            )

        kwargs.pop("control_model", None)  # the units themselves, beside their residuals (`control`)
        # `install` saw the pass's patcher; an extension whose hook runs after ours may patch it still
        inside = [key for key in INSIDE_THE_UNET if (transformer_options or {}).get(key)]
        if inside:
            self.serving.torch_serves(f"another extension patched the UNet ({', '.join(inside)})")
            return on_torch()
        if not self.serving.controlnet_job:
            if control is not None:  # a unit added after our hook made the pass's plan
                self.serving.torch_serves("a ControlNet unit came after the job's start")
                return on_torch()
            return self.serving.dispatch(x, timesteps, context, (), kwargs, on_torch)
        residuals = forge_residuals(control, x, self.torch_unet)
        extra = [key for key, value in kwargs.items() if key != "y" and value is not None]
        why = residuals if isinstance(residuals, str) else None
        if extra:
            why = f"extra UNet inputs ({', '.join(extra)}) that the compiled UNet does not take"
        if why is None:
            try:
                return self.serving.serve_controlled(x, timesteps, context, kwargs.get("y"), residuals)
            except TorchServes as err:
                why = str(err)
        self.serving.torch_serves(why)
        return on_torch()


class ForgeUnet(OpenVINOUnet):
    """The SD Unet in Forge: activated by Forge's `sd_unet.apply_unet` like A1111's, it serves
    through the object it patches into each sampling pass (`install`)."""

    config: dict | None = None  # the ldm config of the loaded checkpoint's UNet

    def __init__(self, option) -> None:
        super().__init__(option)
        self.patched: list = []  # this job's patched clones, whose object is on Forge's model
        self.pending: tuple | None = None  # the pass's start_job, carried out at `install`
        self.companions = ForgeCompanions()  # Forge's VAE decode on OpenVINO

    def unpatch(self) -> None:
        """Forge's model gets its own UNet back. Forge itself puts it back only when another clone
        of the model loads, but its Lora extension reads the model's weights (`add_patches` keeps
        only keys the model has) before that: with our object still in place, the next job's LoRA
        would find no UNet weights and be dropped, on torch too."""
        for clone in self.patched:
            clone.forge_unpatch_model()
        self.patched.clear()

    def begin_job(self) -> None:
        self.unpatch()  # a job that ended without its postprocess (an error) left it
        super().begin_job()

    def job_ended(self) -> None:
        self.unpatch()
        super().job_ended()

    def deactivate(self) -> None:
        self.unpatch()
        if self.bound_elsewhere(shared.sd_model):  # Forge dropped that model: nothing to read back
            self.weights = None
        super().deactivate()

    def bound_elsewhere(self, sd_model) -> bool:
        """True when Forge loaded another model than the one this serves (a checkpoint change)."""
        return self.source is not None and self.source.unet is not torch_unet_of(sd_model)

    def activate(self) -> None:
        model = shared.sd_model
        self.record = JobRecord()
        unet = torch_unet_of(model)
        # from the option before, at a recipe switch: its freed weights and compiled companions
        self.weights, companions = HANDOVER.take(unet)
        self.companions = companions or self.companions
        try:  # the shipped ldm/sgm config of its weights (their shapes: nothing is read or copied)
            self.config = unet_config(unet)
        except Exception as err:  # a refiner, SD3, ..., before anything is written
            why = f"this model is not served on OpenVINO in Forge yet (SD1.x, SD2.x and SDXL base are): {err}"
            self.source, self.unsupported = UNetSource(cache_root(), "", "", unet), why
            self.use_torch(err)
            self.unavailable = why
            return
        self.weights = self.weights or unet_weights(unet, model.sd_checkpoint_info.filename)
        self.open_again()
        self.opened_for_job = True

    def open_again(self) -> None:
        model = shared.sd_model
        unet = torch_unet_of(model)
        try:
            if self.source is None or not self.source.checkpoint_hash:
                info = model.sd_checkpoint_info
                name, sha256 = checkpoint_identity(info)
                filename, config = Path(info.filename), self.config
                self.source = UNetSource(
                    cache_root(),
                    name,
                    sha256,
                    unet,
                    torch_calls=self.torch_computes,
                    exported=lambda: load_unet_from_checkpoint(filename, config),
                )
                self.binding_note = self.check_binding(info)
            self.open(runtime_settings())
            self.offload()
        except Exception as err:
            self.source = self.source or UNetSource(cache_root(), "", "", unet)
            self.use_torch(err)

    @contextlib.contextmanager
    def torch_computes(self) -> Iterator[None]:
        """Around an export, which traces the ldm/sgm UNet made from the file, not Forge's module:
        Forge's own weights leave memory first (as set in Settings), so the peak holds one FP32
        copy of the UNet, not two (SDXL's is 10 GB). They come back if OpenVINO then can't serve."""
        if self.weights is not None and offload_mode() != "none":
            try:
                self.weights.release(webui_progress)
            except Exception as err:  # a saving only: the export goes on with them in memory
                log.warning("sd-ov: the torch UNet's weights stay in memory: %s", err)
        yield

    def read_job(self, unet, first_pass: bool) -> HostReading:
        """The pass's UnetPatcher: the LoRA patches of Forge's Lora extension, the units of its
        ControlNet."""
        patcher = shared.sd_model.forge_objects.unet
        units, why = forge_units(patcher)
        return HostReading(forge_lora(patcher), units or None, why, [])

    def serve_control(self, units) -> bool:
        """Forge's ControlNet units: the OpenVINO UNet opened with their residual inputs (each call
        gets them from Forge's `c["control"]`, `forge_residuals`); their control models stay
        Forge's, on torch. A UNet that can't take them makes the job torch's."""
        try:
            self.served.set_control(bool(units))
        except Exception as err:
            if not units:
                raise
            self.job_torch_reason = f"ControlNet on torch: {explain(err)}"
            return False
        if units:
            self.control_models.host_runs("Forge's ControlNet class is its own: not exported yet")
            plural = "s" if len(units) > 1 else ""
            self.record.controlnet = (
                f"{len(units)} unit{plural} (ControlNet): residuals into the OpenVINO UNet"
            )
        return bool(units)

    def start_job(
        self, deepcache, expected_calls: int, first_pass: bool = True, companion_notes=None
    ) -> None:
        """Forge completes the pass's UnetPatcher (LoRAs, then ControlNet's units, added in its own
        `process_before_every_sampling`) just before sampling: the pass's plan is made then
        (`install`), not at the batch's start."""
        self.pending = (deepcache, expected_calls, first_pass, companion_notes)

    def install(self, p) -> None:
        """This sampling pass's UNet: a clone of the job's patcher whose `diffusion_model` calls
        go to OpenVINO; left as Forge made it when the job is torch's (the record says why)."""
        if self.pending is not None:
            args, self.pending = self.pending, None
            super().start_job(*args)
        patcher = p.sd_model.forge_objects.unet
        inside = inside_patches(patcher)
        if inside:
            self.job_torch_reason = (
                self.job_torch_reason or f"another extension patched the UNet ({', '.join(inside)})"
            )
        if self.served is None or self.job_torch_reason:
            self.record.unavailable = self.record.unavailable or self.job_torch_reason or self.unavailable
            if self.weights is not None:  # Forge's own UNet runs this pass: its weights first
                self.weights.ensure(webui_progress)
            return
        clone = patcher.clone()
        clone.lora_patches = {}  # the OpenVINO branch applies them: Forge need not merge them in torch
        clone.add_object_patch("diffusion_model", ForgeDiffusionModel(self, torch_unet_of(p.sd_model)))
        p.sd_model.forge_objects.unet = clone
        self.patched.append(clone)
