"""The "SD Unet" options: one per checkpoint (exported on first use; "Automatic" picks it) and one
per optimized recipe in the cache. An option is bound to its checkpoint (unet.py says what happens
when it is chosen while another is loaded)."""

from __future__ import annotations

import logging

from modules import sd_models, sd_unet

from sd_ov import Recipe, canonical, recipe_entries

from .host import not_served_here
from .settings import cache_root

log = logging.getLogger("sd_ov")
LABEL_PREFIX = "[OpenVINO]"


class OpenVINOUnetOption(sd_unet.SdUnetOption):
    """The plain option (one per checkpoint, exported on first use; "Automatic" picks it), or an
    optimized recipe made in the OpenVINO tab, e.g. `[OpenVINO INT8 ToMe0.5] <checkpoint>`."""

    def __init__(self, checkpoint_info, recipe: Recipe | None = None) -> None:
        self.checkpoint_info = checkpoint_info
        self.model_name = checkpoint_info.model_name
        self.recipe = recipe or Recipe()
        tag = LABEL_PREFIX if self.recipe.is_plain else f"[OpenVINO {self.recipe.label()}]"
        self.label = f"{tag} {checkpoint_info.model_name}"

    def create_unet(self):
        """A1111's SdUnet, or Forge's (it patches each sampling pass's UNet instead)."""
        from .forge import ForgeUnet
        from .host import is_forge
        from .unet import OpenVINOUnet

        return ForgeUnet(self) if is_forge() else OpenVINOUnet(self)

    def _identity(self) -> tuple:
        return (self.label, getattr(self.checkpoint_info, "filename", None), canonical(self.recipe.key()))

    # The webui compares the chosen option with the current one (`==`) to decide whether to swap
    # UNets: a relisted but identical option must not take the compiled UNet down.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, OpenVINOUnetOption) and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())


def current_openvino_unet():
    """The serving OpenVINOUnet, if the current SD Unet is one of ours."""
    unet = sd_unet.current_unet
    return unet if isinstance(getattr(unet, "option", None), OpenVINOUnetOption) else None


def reopen_current() -> None:
    unet = current_openvino_unet()
    if unet is not None:
        unet.reopen()


def on_model_loaded(sd_model) -> None:
    """A checkpoint added after start (copied in, the checkpoint list refreshed, then loaded) gets its
    option now: the webui lists SD Unet options only at start and by the refresh button beside
    "SD Unet", so "Automatic" would silently leave it on torch."""
    info = getattr(sd_model, "sd_checkpoint_info", None)
    name = getattr(info, "model_name", None)
    listed = any(isinstance(o, OpenVINOUnetOption) and o.model_name == name for o in sd_unet.unet_options)
    if name and not listed:
        sd_unet.list_unets()
    # Forge loads a changed checkpoint inside the job, after the SD Unet was applied, and never
    # applies it again: the current one would serve the old checkpoint's UNet on the new one.
    unet = current_openvino_unet()
    if unet is not None and unet.bound_elsewhere(sd_model):
        sd_unet.apply_unet("None")
        sd_unet.apply_unet()


def list_unets(unet_list: list) -> None:
    """The plain option of every checkpoint, then every optimized recipe found in the cache; none
    in a webui sd-ov does not serve (choosing one would do nothing)."""
    if not_served_here():
        return
    checkpoints = list(sd_models.checkpoints_list.values())
    unet_list.extend(OpenVINOUnetOption(info) for info in checkpoints)
    try:
        entries = recipe_entries(cache_root())
    except OSError as err:  # an unreadable cache folder must not break the webui's list
        log.warning("sd-ov: cannot list the OpenVINO cache: %s", err)
        return
    by_name = {info.model_name: info for info in checkpoints}
    for entry in entries:
        info = by_name.get(entry.manifest.checkpoint_name)
        if info is not None and not entry.manifest.recipe.is_plain:
            unet_list.append(OpenVINOUnetOption(info, entry.manifest.recipe))
