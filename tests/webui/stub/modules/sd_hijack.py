"""Stand-in of modules/sd_hijack.py (v1.10): the part a job touches, `model_hijack.apply_circular`,
which the webui calls at every job's start with `p.tiling` and which sets every `Conv2d` of the
loaded model (UNet and VAE alike) to circular padding, or back to zeros."""

import torch

from modules import shared


class StableDiffusionModelHijack:
    circular_enabled = False

    def apply_circular(self, enable):
        if self.circular_enabled == enable:
            return
        self.circular_enabled = enable
        model = shared.sd_model
        parts = [model.model.diffusion_model, getattr(model, "first_stage_model", None)]
        for part in (p for p in parts if isinstance(p, torch.nn.Module)):
            for layer in [layer for layer in part.modules() if type(layer) is torch.nn.Conv2d]:
                layer.padding_mode = "circular" if enable else "zeros"


model_hijack = StableDiffusionModelHijack()
