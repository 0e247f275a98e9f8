"""The INT8 VAE decoder Optimize makes beside the recipe (`sd_ov.optimize.vae_int8`): the latents its
calibration pictures decoded with the torch VAE's pictures of them, the decoder quantized and
measured on those, and what the tab and the API say about it. The recipe is made first: a
failure or a Cancel here leaves it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from sd_ov import Cancelled, cache, quantize_vae_decoder

from .vae import vae_entry

log = logging.getLogger("sd_ov")


@dataclass
class Optimized:
    """What one Optimize made: the recipe's entry and, when asked for, its DeepCache pair and the
    INT8 VAE decoder's entry (or why there is none: the recipe stays made either way)."""

    entry: cache.CacheEntry
    vae_decoder: cache.CacheEntry | None = None
    vae_decoder_note: str = ""
    pair: cache.CacheEntry | None = None  # its DeepCache pair, when asked for and made
    pair_note: str = ""  # why a DeepCache pair asked for was not made
    label: str = ""  # its SD Unet option
    previous_unet: str | None = None  # the SD Unet setting it replaced as current (None: not made current)

    def vae_report(self) -> dict:
        if self.vae_decoder is not None and self.vae_decoder.manifest.report is not None:
            return self.vae_decoder.manifest.report.to_json()
        return {"note": self.vae_decoder_note} if self.vae_decoder_note else {}


class DecodedLatents:
    """The latents the calibration pictures' VAE `decode` was given and the torch VAE's pictures
    of them: the INT8 VAE decoder's calibration data and its fidelity reference."""

    def __init__(self) -> None:
        self.latents: list = []
        self.pictures: list = []

    def __call__(self, z, out) -> None:
        self.latents.append(z.detach().to("cpu", torch.float32).numpy())
        self.pictures.append(out.detach().to("cpu", torch.float32).numpy())


def int8_vae_decoder(made: Optimized, model, name, sha256, decoded: DecodedLatents, device, progress) -> None:
    """The INT8 decoder of the webui's VAE, calibrated on the calibration pictures' latents and
    measured against the torch VAE's pictures of them. The recipe is made by then: a failure or a
    Cancel here leaves it, and `made` says why there is no decoder."""
    if not decoded.latents:  # a recipe that needs no calibration made no pictures
        made.vae_decoder_note = "not made: the recipe made no calibration pictures to calibrate it on"
        return
    try:
        entry = vae_entry(model.first_stage_model, name, sha256, progress)
        made.vae_decoder = quantize_vae_decoder(
            entry, decoded.latents, decoded.pictures, device=device, progress=progress
        )
    except Cancelled:
        made.vae_decoder_note = "cancelled: the VAE decoder stays as it was"
    except Exception as err:  # the recipe is made; the VAE stays float
        log.exception("sd-ov: the INT8 VAE decoder failed")
        made.vae_decoder_note = f"failed ({type(err).__name__}: {err}): the VAE decoder stays as it was"


def vae_decoder_line(made: Optimized) -> str:
    """The INT8 VAE decoder in one sentence, for the tab."""
    if made.vae_decoder is None:
        return f"INT8 VAE decoder {made.vae_decoder_note}."
    r = made.vae_decoder.manifest.report
    fidelity = f", {r.psnr_db:.1f} dB against the torch VAE's calibration pictures" if r and r.psnr_db else ""
    if r and r.encoder_psnr_db:
        fidelity += f"; its INT8 encoder {r.encoder_psnr_db:.1f} dB against the float encoder's"
    return (
        f"{r.label if r else 'INT8 VAE decoder'} made{fidelity}: it decodes (and encodes) while Settings → "
        "OpenVINO → VAE precision is auto (infotext: OpenVINO VAE: decode (int8), encode (int8))."
    )
