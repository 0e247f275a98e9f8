"""A switch from one OpenVINO SD Unet option to another (another recipe of the loaded checkpoint)
keeps what does not depend on the recipe: the torch UNet's weights stay freed, and the VAE and
text encoders stay compiled.

The webui switches options in `sd_unet.apply_unet` by deactivating the old one, which gives the
torch UNet its weights back for whatever runs next, and activating the new one, which frees them
again: for a recipe change that read the whole UNet back from the checkpoint (3.4 GB at SD1.5 in
f32, 10 GB at SDXL) and compiled the VAE and text encoders again, for nothing. `job.before_init`
applies the option itself, inside `handing_over()`: what the old option leaves is taken by the new
one's `activate`, and whatever nobody took (the new option is torch's after all, or failed before
it looked) is given back to torch when the switch ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .companions import Companions
from .offload import WebuiWeights
from .progress import webui_progress


class Handover:
    """What the old option left for the next one, during one switch."""

    def __init__(self) -> None:
        self.open = False
        self.unet: torch.nn.Module | None = None
        self.weights: WebuiWeights | None = None
        self.companions: Companions | None = None

    def leave(self, unet: torch.nn.Module, weights: WebuiWeights | None, companions: Companions) -> bool:
        """The old option's deactivate: False outside a switch (it gives them back itself)."""
        if not self.open:
            return False
        self.unet, self.weights, self.companions = unet, weights, companions
        return True

    def take(self, unet: torch.nn.Module) -> tuple[WebuiWeights | None, Companions | None]:
        """The new option's activate: what was left for this very torch UNet, if anything."""
        if self.unet is not unet:
            return None, None
        left = self.weights, self.companions
        self.unet, self.weights, self.companions = None, None, None
        return left

    def give_back(self) -> None:
        """Not taken: the torch UNet's weights back and the companions' models dropped, as a plain
        deactivate would have left them."""
        weights, companions = self.weights, self.companions
        self.unet, self.weights, self.companions = None, None, None
        if companions is not None:
            companions.drop()
        if weights is not None:
            weights.ensure(webui_progress)


HANDOVER = Handover()


@contextlib.contextmanager
def handing_over(between_openvino_options: bool) -> Iterator[None]:
    """Around the webui's `apply_unet` (and the new option's preparation) when both the current
    option and the one the job asks for are OpenVINO's."""
    HANDOVER.open = between_openvino_options
    try:
        yield
    finally:
        HANDOVER.open = False
        HANDOVER.give_back()
