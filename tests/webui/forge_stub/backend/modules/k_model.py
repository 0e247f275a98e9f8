"""Stand-in of Forge's backend/modules/k_model.py: `KModel.apply_model` calls its `diffusion_model`
as Forge does (keyword context, control, transformer_options, extra conditioning). The predictor's
input and output scaling is left out: the stand-in's sampler passes the UNet's timesteps."""

import torch


class KModel(torch.nn.Module):
    def __init__(self, model, diffusers_scheduler=None, k_predictor=None, config=None):
        super().__init__()
        self.config = config
        self.diffusion_model = model

    def apply_model(
        self,
        x,
        t,
        c_concat=None,
        c_crossattn=None,
        control=None,
        transformer_options={},  # noqa: B006 - Forge's signature
        **kwargs,
    ):
        xc = x if c_concat is None else torch.cat([x, c_concat], dim=1)
        return self.diffusion_model(
            xc,
            t.float(),
            context=c_crossattn,
            control=control,
            transformer_options=transformer_options,
            **kwargs,
        ).float()
