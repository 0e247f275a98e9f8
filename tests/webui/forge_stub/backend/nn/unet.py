"""Stand-in of Forge's backend/nn/unet.py: its UNet's forward (`IntegratedUNet2DConditionModel`),
which adds ControlNet's residuals with `apply_control` (input after each input block, middle after
the middle block, output to each skip as it is popped), over ldm's blocks (the same state dict)."""

import torch
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm.modules.diffusionmodules.util import timestep_embedding


def apply_control(h, control, name):
    if control is not None and name in control and len(control[name]) > 0:
        ctrl = control[name].pop()
        if ctrl is not None:
            try:
                h += ctrl
            except Exception:
                print("warning control could not be applied", h.shape, ctrl.shape)
    return h


class IntegratedUNet2DConditionModel(UNetModel):
    def forward(
        self, x, timesteps=None, context=None, y=None, control=None, transformer_options=None, **kwargs
    ):
        hs = []
        emb = self.time_embed(
            timestep_embedding(timesteps, self.model_channels, repeat_only=False).to(x.dtype)
        )
        if self.num_classes is not None:
            emb = emb + self.label_emb(y)
        h = x
        for module in self.input_blocks:
            h = module(h, emb, context)
            h = apply_control(h, control, "input")
            hs.append(h)
        h = self.middle_block(h, emb, context)
        h = apply_control(h, control, "middle")
        for module in self.output_blocks:
            hsp = hs.pop()
            hsp = apply_control(hsp, control, "output")
            h = torch.cat([h, hsp], dim=1)
            h = module(h, emb, context)
        return self.out(h)
