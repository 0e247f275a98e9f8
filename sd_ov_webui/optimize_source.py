"""The torch UNet Optimize works from, in each host. A1111's is the webui's own module (ldm's or
sgm's class), whose weights leave memory while calibration and NNCF run. Forge's class is its own:
Optimize works from the ldm/sgm class loaded with the checkpoint file's weights (as the export does,
so A1111 and Forge make the same recipe), and Forge's own UNet weights stay out of memory for the
whole Optimize, so one copy is resident, not two."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

import torch
from modules import shared

from sd_ov import build_unet, load_unet_from_checkpoint

from . import host
from .offload import WebuiWeights, unet_weights
from .settings import offload_mode


def model_loaded() -> bool:
    """False in Forge before its first job: it loads the chosen checkpoint then, and until then
    `shared.sd_model` is a stand-in without weights (its FakeInitialModel)."""
    return not host.is_forge() or hasattr(shared.sd_model, "forge_objects")


def loaded_model():
    """The loaded model, loaded first in Forge as its jobs load it (`forge_model_reload`)."""
    if not model_loaded():
        from modules import sd_models

        sd_models.forge_model_reload()
    return shared.sd_model


def host_torch_unet(model) -> torch.nn.Module | None:
    """The webui's torch UNet module where the host exposes one as ldm's/sgm's (A1111); None in Forge."""
    return None if host.is_forge() else model.model.diffusion_model


def forge_config(model) -> dict:
    from .forge import torch_unet_of, unet_config

    return unet_config(torch_unet_of(model))


def unet_to_check(model) -> torch.nn.Module:
    """A module whose description says what Optimize can make of the loaded UNet (Forge: built
    on the meta device from the shipped config of its weights' shapes: nothing is allocated)."""
    if not host.is_forge():
        return model.model.diffusion_model
    with torch.device("meta"):
        return build_unet(forge_config(model), seed=None)


@contextlib.contextmanager
def optimize_source(model, progress) -> Iterator[tuple[torch.nn.Module, WebuiWeights | None]]:
    """(the torch UNet Optimize exports and measures, its weights that may leave memory meanwhile:
    none in the `none` memory mode)."""
    keep = offload_mode() == "none"
    filename = model.sd_checkpoint_info.filename
    if not host.is_forge():
        unet = model.model.diffusion_model
        yield unet, None if keep else unet_weights(unet, filename)
        return
    from .forge import torch_unet_of

    config = forge_config(model)
    own = None if keep else unet_weights(torch_unet_of(model), filename)
    if own is not None:
        own.release(progress)
    try:
        unet = load_unet_from_checkpoint(filename, config)
        yield unet, None if keep else unet_weights(unet, filename)
    finally:
        unet = None
        gc.collect()
        if own is not None:
            own.ensure(progress)
