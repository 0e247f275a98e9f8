"""Stand-in of sd-webui-controlnet (Mikubill/sd-webui-controlnet v1.1.455).

Its scripts/hook.py: `UnetHook.hook` replaces the UNet instance's forward with `forward_webui`,
whose closure holds `outer`; `aligned_adding`; the webui's resizing cat (the extension has its own
copy); `restore`. The ControlModelType names of scripts/enums.py, and a Script whose `process`
hooks and `postprocess` restores, as the extension's does. The forward keeps the real one's order
of work for ControlNet units (residual scales, soft injection, `aligned_adding` at the middle
block and at each skip join, the blocks run one by one); the parts for other unit types are left
out: sd-ov refuses those types before a call. The control model is a ControlNet of the real
layout (the UNet's encoder, a hint block, a zero conv per input block and one after the middle
block), tiny.
"""

from __future__ import annotations

import math
from enum import Enum

import torch
import torch as th
import torch.nn as nn
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm.modules.diffusionmodules.util import timestep_embedding
from modules import scripts
from modules.sd_hijack_unet import TorchHijackForUnet  # the extension has its own copy of this class


class ControlModelType(Enum):
    ControlNet = "ControlNet, Lvmin Zhang"
    T2I_Adapter = "T2I_Adapter, Chong Mou"
    AttentionInjection = "AttentionInjection, Lvmin Zhang"
    ControlLoRA = "ControlLoRA, Wu Hecong"
    IPAdapter = "IPAdapter, Hu Ye"
    ControlNetUnion = "ControlNetUnion, xinsir6"

    @property
    def is_controlnet(self) -> bool:
        kinds = (ControlModelType.ControlNet, ControlModelType.ControlLoRA, ControlModelType.ControlNetUnion)
        return self in kinds


th_cat = TorchHijackForUnet()


def aligned_adding(base, x, require_channel_alignment):
    if isinstance(x, float):
        if x == 0.0:
            return base
        return base + x
    if require_channel_alignment:
        zeros = torch.zeros_like(base)
        zeros[:, : x.shape[1], ...] = x
        x = zeros
    base_h, base_w = base.shape[-2:]
    xh, xw = x.shape[-2:]
    if (xh > 1 or xw > 1) and (base_h != xh or base_w != xw):
        x = th.nn.functional.interpolate(x, size=(base_h, base_w), mode="nearest")
    return base + x


class ControlParams:
    def __init__(
        self,
        control_model,
        hint_cond,
        weight=1.0,
        control_model_type=ControlModelType.ControlNet,
        soft_injection=False,
        guidance_stopped=False,
    ):
        self.control_model = control_model
        self.hint_cond = hint_cond
        self.weight = weight
        self.control_model_type = control_model_type
        self.soft_injection = soft_injection
        self.guidance_stopped = guidance_stopped
        self.advanced_weighting = None


class TinyControlNet(nn.Module):
    """cldm's ControlNet layout at the tiny UNet's size: its input blocks and middle block, a hint
    block that brings the picture-sized hint to the latent's size, the hint added after the first
    block, a zero conv per input block and one after the middle."""

    def __init__(self, unet_config: dict, seed: int = 5) -> None:
        super().__init__()
        torch.manual_seed(seed)
        encoder = UNetModel(**unet_config)
        self.model_channels = encoder.model_channels
        self.time_embed, self.input_blocks, self.middle_block = (
            encoder.time_embed,
            encoder.input_blocks,
            encoder.middle_block,
        )
        # cldm's hint block: the hint is the picture (8x the latent), brought down by three
        # stride-2 convolutions
        self.input_hint_block = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(16, 16, 3, padding=1, stride=2),
            nn.SiLU(),
            nn.Conv2d(16, 32, 3, padding=1, stride=2),
            nn.SiLU(),
            nn.Conv2d(32, self.model_channels, 3, padding=1, stride=2),
        )
        from sd_ov.graphs.ldm_unet import feature_shapes

        shapes = feature_shapes(encoder, 8, 8)
        self.zero_convs = nn.ModuleList(nn.Conv2d(c, c, 1) for c, _, _ in shapes[:-1])
        self.middle_block_out = nn.Conv2d(shapes[-1][0], shapes[-1][0], 1)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # "zero" convs with weights: the residuals must change the picture
            for conv in [*self.zero_convs, self.middle_block_out, self.input_hint_block[-1]]:
                scale = math.sqrt(conv.weight[0].numel())
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) / scale)
        self.eval()

    def forward(self, x, hint, timesteps, context, y=None, **kwargs):
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels, repeat_only=False))
        guided_hint = self.input_hint_block(hint)
        outs, h = [], x
        for i, (block, zero_conv) in enumerate(zip(self.input_blocks, self.zero_convs, strict=True)):
            h = block(h, emb, context)
            if i == 0:
                h = h + guided_hint
            outs.append(zero_conv(h))
        outs.append(self.middle_block_out(self.middle_block(h, emb, context)))
        return outs


class PlugableControlModel(nn.Module):
    def __init__(self, control_model: nn.Module) -> None:
        super().__init__()
        self.control_model = control_model

    def forward(self, *args, **kwargs):
        return self.control_model(*args, **kwargs)


class UnetHook(nn.Module):
    def __init__(self, lowvram=False) -> None:
        super().__init__()
        self.lowvram = lowvram
        self.model = None
        self.control_params = None
        self.attn_module_list = []
        self.gn_module_list = []

    def hook(self, model, sd_ldm, control_params, process):
        self.model = model
        self.sd_ldm = sd_ldm
        self.control_params = control_params
        outer = self

        def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
            total_t2i_adapter_embedding = [0.0] * 4
            total_controlnet_embedding = [0.0] * 13
            require_inpaint_hijack = False

            for param in outer.control_params:
                if param.guidance_stopped:
                    continue
                if not param.control_model_type.is_controlnet:
                    continue
                hint = param.hint_cond
                control = param.control_model(x=x, hint=hint, timesteps=timesteps, context=context, y=y)
                control_scales = [param.weight] * 13
                if param.soft_injection:
                    control_scales = [param.weight * (0.825 ** float(12 - i)) for i in range(13)]
                control = [c * scale for c, scale in zip(control, control_scales, strict=False)]
                for idx, item in enumerate(control):
                    total_controlnet_embedding[idx] = item + total_controlnet_embedding[idx]

            hs = []
            with th.no_grad():
                t_emb = timestep_embedding(timesteps, self.model_channels, repeat_only=False)
                emb = self.time_embed(t_emb)
                h = x
                for i, module in enumerate(self.input_blocks):
                    self.current_h_shape = (h.shape[0], h.shape[1], h.shape[2], h.shape[3])
                    h = module(h, emb, context)
                    if i in [2, 5, 8, 11]:
                        h = aligned_adding(h, total_t2i_adapter_embedding.pop(0), require_inpaint_hijack)
                    hs.append(h)
                self.current_h_shape = (h.shape[0], h.shape[1], h.shape[2], h.shape[3])
                h = self.middle_block(h, emb, context)

            # the tiny UNet has 7 input blocks: the residuals of the 13 that fit it
            total_controlnet_embedding = total_controlnet_embedding[: len(hs) + 1]
            h = aligned_adding(h, total_controlnet_embedding.pop(), require_inpaint_hijack)
            for module in self.output_blocks:
                self.current_h_shape = (h.shape[0], h.shape[1], h.shape[2], h.shape[3])
                skip = aligned_adding(hs.pop(), total_controlnet_embedding.pop(), require_inpaint_hijack)
                h = th_cat.cat([h, skip], dim=1)
                h = module(h, emb, context)
            h = h.type(x.dtype)
            h = self.out(h)
            return h

        def forward_webui(*args, **kwargs):
            try:
                return forward(*args, **kwargs)
            finally:
                if outer.lowvram:
                    pass

        model._original_forward = model.forward
        outer.original_forward = model.forward
        model.forward = forward_webui.__get__(model, UNetModel)

    def restore(self):
        self.control_params = None
        if self.model is not None and hasattr(self.model, "_original_forward"):
            self.model.forward = self.model._original_forward
            del self.model._original_forward


class ControlNetScript(scripts.Script):
    """sd-webui-controlnet's Script, as far as its hooks go: `process` hooks the UNet for the
    job's units (a list of ControlParams factories: (p) → ControlParams), `postprocess` restores."""

    def __init__(self, units) -> None:
        self.units = units
        self.latest_network = None

    def title(self):
        return "ControlNet"

    def process(self, p, *args):
        if self.latest_network is not None:
            self.latest_network.restore()
        if not self.units:
            self.latest_network = None
            return
        unet = p.sd_model.model.diffusion_model
        self.latest_network = UnetHook()
        params = [unit(p) for unit in self.units]
        self.latest_network.hook(model=unet, sd_ldm=p.sd_model, control_params=params, process=p)

    def postprocess(self, p, processed, *args):
        if self.latest_network is not None:
            self.latest_network.restore()
            self.latest_network = None
