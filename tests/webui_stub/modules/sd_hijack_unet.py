"""Stand-in of the webui's class-level patch that routes every UNetModel call to sd_unet."""

from ldm.modules.diffusionmodules.openaimodel import UNetModel

from modules import sd_unet

_original = None


def hijack():
    global _original
    if _original is None:
        _original = UNetModel.forward
        UNetModel.forward = sd_unet.create_unet_forward(_original)


def undo():
    global _original
    if _original is not None:
        UNetModel.forward = _original
        _original = None
