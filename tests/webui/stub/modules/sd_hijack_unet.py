"""Stand-in of the webui's class-level patch (modules/sd_hijack.py) that routes every UNetModel
call to sd_unet, of `sd_unet.original_forward`, which the webui sets per model type, and of
`TorchHijackForUnet` (modules/sd_hijack_unet.py), which sd_hijack installs as openaimodel's
`th` so that pictures whose sides are multiples of 8 px (not 64) run: its `cat` resizes
(nearest) the first of two tensors to the second's size when they differ."""

import torch
from ldm.modules.diffusionmodules import openaimodel
from ldm.modules.diffusionmodules.openaimodel import UNetModel

from modules import sd_unet

_original = None
_original_th = None


class TorchHijackForUnet:
    def __getattr__(self, item):
        if item == "cat":
            return self.cat
        if hasattr(torch, item):
            return getattr(torch, item)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{item}'")

    def cat(self, tensors, *args, **kwargs):
        if len(tensors) == 2:
            a, b = tensors
            if a.shape[-2:] != b.shape[-2:]:
                a = torch.nn.functional.interpolate(a, b.shape[-2:], mode="nearest")
            tensors = (a, b)
        return torch.cat(tensors, *args, **kwargs)


th = TorchHijackForUnet()


def hijack():
    global _original, _original_th
    if _original is None:
        _original = UNetModel.forward
        UNetModel.forward = sd_unet.create_unet_forward(_original)
        sd_unet.original_forward = _original
        _original_th, openaimodel.th = openaimodel.th, th


def undo():
    global _original
    if _original is not None:
        UNetModel.forward = _original
        sd_unet.original_forward = None
        openaimodel.th = _original_th
        _original = None
