"""The pictures Optimize makes with the webui's own sampler and prompts: calibration pictures
(every UNet call's inputs kept, and what the VAE decoded) and the report's sample picture; and
the text encoders' torch weights, resident only while a picture encodes its prompts."""

from __future__ import annotations

import contextlib

from modules import shared

from sd_ov import Calibration, Cancelled, CapturingUNet

from .int8_vae import DecodedLatents
from .optimize_source import host_torch_unet
from .settings import offload_mode
from .text_encoder import HOST_CLASSES, text_encoder_slots, text_encoder_weights
from .torch_unet import unet_calls_to


@contextlib.contextmanager
def before_decoding(first_stage, hook, decoded: DecodedLatents | None = None):
    """`hook()` runs when the picture's latents are about to be decoded (the VAE's `decode`, which
    the webui's decode_first_stage calls), `decoded(z, picture)` after; the VAE's own method is
    back afterwards."""
    if (hook is None and decoded is None) or first_stage is None:
        yield
        return
    saved = vars(first_stage).get("decode")
    own = first_stage.decode

    def decode(*args, **kwargs):
        if hook is not None:
            hook()
        out = own(*args, **kwargs)
        if decoded is not None and args and not kwargs:
            decoded(args[0], out)
        return out

    first_stage.decode = decode
    try:
        yield
    finally:
        if saved is None:
            vars(first_stage).pop("decode", None)
        else:
            first_stage.decode = saved


def webui_picture(calib: Calibration, prompt: str, seed: int, unet_fn=None, before_decode=None, decoded=None):
    """One txt2img picture (numpy RGB) made by the webui itself, its UNet calls served by `unet_fn`
    (torch when None), `before_decode()` called when sampling is done and `decoded(z, picture)`
    given the VAE's input and output. The webui's token merging is off: it would change only the
    torch picture. Live previews are off: nobody watches a calibration picture, and the webui
    would load (the first time for SDXL: download) its preview decoder, which fails offline."""
    import numpy as np
    from modules import processing

    p = processing.StableDiffusionProcessingTxt2Img(
        sd_model=shared.sd_model,
        prompt=prompt,
        negative_prompt="",
        seed=seed,
        sampler_name=calib.sampler,
        steps=calib.steps,
        width=calib.width,
        height=calib.height,
        cfg_scale=7.0,
        batch_size=1,
        n_iter=1,
        do_not_save_samples=True,
        do_not_save_grid=True,
        override_settings={"sd_unet": "None", "token_merging_ratio": 0, "live_previews_enable": False},
        override_settings_restore_afterwards=True,
    )
    with (
        unet_calls_to(unet_fn),
        before_decoding(getattr(shared.sd_model, "first_stage_model", None), before_decode, decoded),
    ):
        processed = processing.process_images(p)
    if not processed.images or shared.state.interrupted:
        raise Cancelled("the sampler was interrupted")
    return np.asarray(processed.images[0].convert("RGB"))


class PromptEncoders:
    """The text encoders' torch weights while Optimize runs: needed only while a picture encodes
    its prompts, so they leave memory for the rest (the export, the calibration UNet's compile
    and sampling, NNCF). SDXL's are 3.3 GB in f32: measured in the webui, Optimize peaked at 18.6
    GiB during the export and 17.4 GiB during calibration with them resident (AMD EPYC, 2026-12-02).
    Nothing leaves in the `none` memory mode."""

    def __init__(self, model, progress) -> None:
        keep = offload_mode() == "none"
        filename = model.sd_checkpoint_info.filename
        self.progress = progress
        self.weights = [
            text_encoder_weights(
                module, prefix, filename, f"torch {HOST_CLASSES[type(module).__name__][1]} text encoder"
            )
            for module, prefix in ([] if keep else text_encoder_slots(model))
        ]

    def release(self) -> None:
        for weights in self.weights:
            weights.release(self.progress)

    def ensure(self) -> None:
        for weights in self.weights:
            weights.ensure(self.progress)

    def released_at_first_call(self, unet_fn):
        """`unet_fn` that, at its first call (the prompts are encoded by then), frees the text
        encoders' weights again."""
        first = [True]

        def call(*args, **kwargs):
            if first[0]:
                first[0] = False
                self.release()
            return unet_fn(*args, **kwargs)

        return call


def webui_capture(
    calib: Calibration, encoders: PromptEncoders | None = None, decoded: DecodedLatents | None = None
):
    """Calibration: a picture per prompt with the UNet Optimize hands over (INT8 weights); every
    UNet call's inputs are kept (and, with `decoded`, what the VAE decoded)."""

    def capture(runtime, progress):
        capturing = CapturingUNet(runtime)
        for i, prompt in enumerate(calib.prompts):
            progress(
                f"calibration picture {i + 1}/{len(calib.prompts)}: {prompt[:60]}", i / len(calib.prompts)
            )
            unet_fn = capturing
            if encoders is not None:
                encoders.ensure()
                unet_fn = encoders.released_at_first_call(capturing)
            # the UNet's buffers go before the VAE decodes (SDXL: both at once set the peak)
            release = getattr(runtime, "release_memory", None)
            webui_picture(calib, prompt, calib.seed + i, unet_fn, release, decoded)
        return capturing.samples

    return capture


def webui_sample_image(calib: Calibration, encoders: PromptEncoders | None = None):
    """The report's picture: the first prompt, same seed, with torch or with the recipe."""
    torch_unet = host_torch_unet(shared.sd_model)  # Forge: None, the module Optimize works from is torch's

    def picture(unet):
        if encoders is not None:
            encoders.ensure()
        try:
            return webui_picture(calib, calib.prompts[0], calib.seed, None if unet is torch_unet else unet)
        finally:
            if encoders is not None:
                encoders.release()

    return picture
