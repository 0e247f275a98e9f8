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
entries. SD1.x and SD2.x: Forge does not ship sgm, so SDXL stays on torch with the reason.

Forge's LoRAs (low-rank patches on the job's UnetPatcher) go to the OpenVINO UNet's LoRA branch.
Not served on OpenVINO in Forge yet, each making the job's UNet calls torch's with the reason:
other LoRA kinds, its ControlNet units, patches other extensions put inside the UNet
(`transformer_options` patches, block modifiers). The torch UNet's weights are freed while OpenVINO
serves and read back before Forge's own UNet runs (its parameters are inference tensors); its VAE
and text encoders are its own.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from modules import shared

from sd_ov import (
    JobRecord,
    LoraLayer,
    UNetSource,
    concatenate,
    config_for_state_dict,
    load_unet_from_checkpoint,
)

from .checkpoints import checkpoint_identity
from .lora import UNetLora, low_rank_layer
from .offload import unet_weights
from .plan import HostReading
from .progress import webui_progress
from .recipe_switch import HANDOVER
from .settings import cache_root, runtime_settings
from .unet import OpenVINOUnet

log = logging.getLogger("sd_ov")

# transformer_options entries that change what happens inside the UNet (FreeU, SAG, PAG, Kohya's
# HRFix, ... put theirs here): the compiled UNet can't follow them.
UNET_KEY = "diffusion_model."  # Forge's LoRA keys: the KModel's names of the UNet's weights
# Forge's LoRA patch kinds (backend/patcher/lora.py) and what users call them.
FORGE_KINDS = {
    "diff": "full-weight diff",
    "set": "weight replacement",
    "lokr": "LoKr",
    "loha": "LoHa",
    "glora": "GLoRA",
}
INSIDE_THE_UNET = (
    "patches",
    "patches_replace",
    "block_modifiers",
    "block_inner_modifiers",
    "group_norm_wrapper",
)


def torch_unet_of(sd_model) -> torch.nn.Module:
    """Forge's own torch UNet of the loaded model, whatever clone last patched `diffusion_model`."""
    unet = sd_model.forge_objects.unet.model.diffusion_model
    return unet.torch_unet if isinstance(unet, ForgeDiffusionModel) else unet


def inside_patches(patcher) -> list[str]:
    """What other extensions patched inside this UNet patcher (names, for the reason)."""
    options = patcher.model_options.get("transformer_options", {})
    found = [key for key in INSIDE_THE_UNET if options.get(key)]
    found += [name for name in patcher.object_patches if name.startswith("diffusion_model")]
    return found


def forge_lora(patcher) -> UNetLora:
    """Forge's LoRA patches (`UnetPatcher.lora_patches`: per LoRA file, `diffusion_model.<layer>.weight`
    → `[strength, ("lora", (up, down, alpha, mid, dora_scale)), strength_model, offset, function]`,
    which `backend/patcher/lora.py` merges as `weight += strength * alpha / rank * up @ down`) as
    the OpenVINO branch's low-rank updates; a patch of another kind makes the job torch's, with why."""
    parts, names = [], []
    for (filename, strength, *_), patches in getattr(patcher, "lora_patches", {}).items():
        label = f"{Path(str(filename)).stem}:{float(strength):g}"
        layers: list[dict[str, LoraLayer]] = []
        for key, entries in patches.items():
            if not (key.startswith(UNET_KEY) and key.endswith(".weight")):
                continue
            path = key[len(UNET_KEY) : -len(".weight")]
            for strength_patch, value, strength_model, offset, function in entries:
                why = forge_patch_refusal(value, strength_model, offset, function)
                if why:
                    return UNetLora(why_not=f"LoRA {label}: {why} ({path})")
                layers.append({path: low_rank(value[1], float(strength_patch))})
        if layers:
            parts.append(concatenate(layers))
            names.append(label)
    return UNetLora(concatenate(parts), names) if parts else UNetLora()


def forge_patch_refusal(value, strength_model, offset, function) -> str | None:
    """Why a Forge LoRA patch is not a plain low-rank update of the layer; None if it is."""
    kind = value[0] if isinstance(value, tuple) and len(value) == 2 else "diff"
    if kind != "lora":
        return f"{FORGE_KINDS.get(kind, kind)} layers are not served on OpenVINO yet"
    if value[1][4] is not None:
        return "DoRA layers are not served on OpenVINO yet"
    if offset is not None or function is not None or float(strength_model) != 1.0:
        return "a patch on part of a layer, or one that scales its weight, is not served on OpenVINO yet"
    return None


def low_rank(lora: tuple, strength: float) -> LoraLayer:
    """Forge's (up, down, alpha, mid, _) at `strength`: scaled by strength x alpha / rank, as
    `backend/patcher/lora.py` merges it."""
    up, down, alpha, mid, _ = lora
    rank = down.shape[0]
    return low_rank_layer(up, down, mid, strength * (float(alpha) / rank if alpha is not None else 1.0))


class ForgeDiffusionModel(torch.nn.Module):
    """What Forge's `KModel` calls as its `diffusion_model` while OpenVINO serves."""

    def __init__(self, serving: ForgeUnet, torch_unet: torch.nn.Module) -> None:
        super().__init__()
        self.serving = serving
        # not a submodule: Forge's moves and its size estimate leave the torch UNet alone
        object.__setattr__(self, "torch_unet", torch_unet)

    def __getattr__(self, name: str):
        # Forge's LoRA loader walks `diffusion_model.<layer>.weight` to put weights back
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "torch_unet"), name)

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

        # `install` saw the pass's patcher; an extension whose hook runs after ours may patch it still
        inside = [key for key in INSIDE_THE_UNET if (transformer_options or {}).get(key)]
        if control is not None:
            self.serving.torch_serves("ControlNet in Forge: its residuals are not served on OpenVINO yet")
            return on_torch()
        if inside:
            self.serving.torch_serves(f"another extension patched the UNet ({', '.join(inside)})")
            return on_torch()
        return self.serving.dispatch(x, timesteps, context, (), kwargs, on_torch)


class ForgeUnet(OpenVINOUnet):
    """The SD Unet in Forge: activated by Forge's `sd_unet.apply_unet` like A1111's, it serves
    through the object it patches into each sampling pass (`install`)."""

    config: dict | None = None  # the ldm config of the loaded checkpoint's UNet

    def __init__(self, option) -> None:
        super().__init__(option)
        self.patched: list = []  # this job's patched clones, whose object is on Forge's model

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
        try:  # the shipped ldm config of its weights (their shapes: nothing is read or copied)
            self.config = config_for_state_dict(dict(unet.named_parameters()))
        except Exception as err:  # SDXL & co, before anything is written
            why = f"this model is not served on OpenVINO in Forge yet (SD1.x and SD2.x are): {err}"
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
        yield  # the export traces ldm's UNet made from the file, not Forge's module

    def read_job(self, unet, first_pass: bool) -> HostReading:
        """Forge's LoRAs: the patches its Lora extension put on the job's UnetPatcher."""
        lora = forge_lora(shared.sd_model.forge_objects.unet)
        notes = [] if not first_pass else ["VAE and text encoders: Forge's own"]
        return HostReading(lora, None, None, notes)

    def install(self, p) -> None:
        """This sampling pass's UNet: a clone of the job's patcher whose `diffusion_model` calls
        go to OpenVINO; left as Forge made it when the job is torch's (the record says why)."""
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
