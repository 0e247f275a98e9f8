"""Stand-in of the webui's class-level patch (modules/sd_hijack.py) that routes every UNetModel
call to sd_unet, and of `sd_unet.original_forward`, which the webui sets per model type."""

from ldm.modules.diffusionmodules.openaimodel import UNetModel

from modules import sd_unet

_original = None


def hijack():
    global _original
    if _original is None:
        _original = UNetModel.forward
        UNetModel.forward = sd_unet.create_unet_forward(_original)
        sd_unet.original_forward = _original


def undo():
    global _original
    if _original is not None:
        UNetModel.forward = _original
        sd_unet.original_forward = None
        _original = None
