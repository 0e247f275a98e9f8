"""The only code that routes a UNet call to torch.

The webui patches `UNetModel.forward` at class level so that every call goes to the current
SdUnet. To make torch compute a call, we call the forward the webui saved before patching
(`sd_unet.original_forward`, set per model type when a checkpoint loads). Where that is not set,
the webui's own switch is turned off for the duration of the call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from modules import sd_unet, shared

from sd_ov import UnsupportedCallError

from . import host


def call_torch(unet: torch.nn.Module, x, timesteps, context, *args, **kwargs):
    """What the torch UNet itself returns for this call."""
    if getattr(type(unet).forward, "__name__", "") != "UNetModel_forward":  # a class the webui did not patch
        return unet(x, timesteps, context, *args, **kwargs)
    original = getattr(sd_unet, "original_forward", None)
    if original is not None:
        return original(unet, x, timesteps, context, *args, **kwargs)
    with unet_calls_to(None):
        return unet(x, timesteps, context, *args, **kwargs)


class FunctionUnet(sd_unet.SdUnet):
    """An SdUnet serving the webui's UNet calls with a function: how Optimize runs the webui's
    own sampler on the FP32 OpenVINO UNet (capturing its inputs) or on a recipe."""

    def __init__(self, fn: Callable) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x, timesteps, context, *args, **kwargs):
        y = kwargs.pop("y", None)  # SDXL's vector conditioning: the UNet's own fourth input
        if args or any(v is not None for v in kwargs.values()):
            raise UnsupportedCallError("Optimize's sampling takes plain UNet calls (no ControlNet & co)")
        return self.fn(x, timesteps, context) if y is None else self.fn(x, timesteps, context, y)


class ForgeStandIn(torch.nn.Module):
    """What sd-ov puts where Forge's KModel holds its `diffusion_model`. Forge reads attributes of
    the UNet it holds (its dtype, `<layer>.weight` for its LoRA loader, ...): they come from its own
    module, which is no submodule here, so Forge's moves and size estimates leave it (and its freed
    weights) alone."""

    def __init__(self, own: torch.nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "torch_unet", own)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "torch_unet"), name)


class ForgeFunctionUnet(ForgeStandIn):
    """Forge's `diffusion_model` while Optimize samples with a function (KModel calls it with
    keywords: context, control, transformer_options, y)."""

    def __init__(self, fn: Callable, own: torch.nn.Module) -> None:
        super().__init__(own)
        self.fn = fn

    def forward(self, x, timesteps=None, context=None, control=None, transformer_options=None, **kwargs):
        y = kwargs.pop("y", None)
        if control is not None or any(v is not None for v in kwargs.values()):
            raise UnsupportedCallError("Optimize's sampling takes plain UNet calls (no ControlNet & co)")
        return self.fn(x, timesteps, context) if y is None else self.fn(x, timesteps, context, y)


@contextlib.contextmanager
def unet_calls_to(fn: Callable | None) -> Iterator[None]:
    """While inside, the webui's UNet calls go to `fn`, or to the torch UNet itself when None.

    Used where a whole sampling run or an export trace must bypass the serving SdUnet (Optimize
    holds the webui's queue lock while it does this, so no job runs beside it). In Forge, the
    loaded model's KModel calls `fn` (every clone of its UNet patcher shares that KModel); with
    None, Forge's own UNet is torch's already (no SD Unet is applied while Optimize runs).
    """
    if host.is_forge():
        kmodel = shared.sd_model.forge_objects.unet.model
        own = kmodel.diffusion_model
        if fn is not None:
            kmodel.diffusion_model = ForgeFunctionUnet(fn, own)
        try:
            yield
        finally:
            kmodel.diffusion_model = own
        return
    saved = sd_unet.current_unet
    sd_unet.current_unet = None if fn is None else FunctionUnet(fn)
    try:
        yield
    finally:
        sd_unet.current_unet = saved


def foreign_forward(unet: torch.nn.Module) -> bool:
    """True when an extension replaced this UNet instance's forward (sd-webui-controlnet does):
    its calls then never reach the SD Unet mechanism. A forward put back as the class's own bound
    method (what ControlNet's `restore` leaves) is not foreign."""
    forward = vars(unet).get("forward")
    return forward is not None and getattr(forward, "__func__", None) is not type(unet).forward
