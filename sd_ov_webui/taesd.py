"""The webui's TAESD decode on OpenVINO ("VAE type for decode: TAESD", and TAESD live previews)
while an OpenVINO UNet serves and Settings → OpenVINO → "VAE through OpenVINO" is on.

The webui builds the TAESD decoder in `sd_vae_taesd.decoder_model()` (it downloads the weights
at first use) and calls the `nn.Sequential` it returns, for the picture and for every preview.
While we serve, that function is wrapped: the decoder it returns gets an OpenVINO `forward` (set
on the instance), exported once per weights into the cache. We never call it ourselves, so a
webui that has no TAESD file yet downloads it exactly when it would without us. Any failure
decodes on torch and the infotext says why.
"""

from __future__ import annotations

import logging

import torch

from sd_ov import OVVae, prepare_taesd_entry, vae_precision

from .component import ServedComponent
from .progress import cancellable_progress, webui_progress
from .settings import cache_root, opt

log = logging.getLogger("sd_ov")


class WebuiTaesd(ServedComponent):
    """An OpenVINO forward on one TAESD decoder; its weights stay (1.2 M parameters)."""

    methods = ("forward",)
    what = "TAESD decoder"

    def open(self) -> None:
        device = str(opt("sd_ov_device"))
        entry = prepare_taesd_entry(self.module, cache_root(), "taesd", cancellable_progress)
        precision = vae_precision(device, str(opt("sd_ov_vae_precision")))
        self.ov = OVVae(entry, device=device, precision=precision, progress=self.progress)

    def infotext(self) -> str | None:
        if self.torch_reason:
            return f"TAESD on torch ({self.torch_reason})"
        return super().infotext()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.served("TAESD", lambda: self.ov.decode(x))
        return out if out is not None else self.torch_method("forward")(x)


class TaesdDecoders:
    """The wrap of `sd_vae_taesd.decoder_model` while an OpenVINO UNet serves, and the decoder it
    serves (the webui keeps one per model family: SD1/SD2, SDXL, SD3)."""

    def __init__(self) -> None:
        self.original = None
        self.current: WebuiTaesd | None = None
        self.reason: str | None = None  # why the last decoder asked for runs on torch

    def start_job(self, wanted: bool) -> None:
        self.reason = None
        if self.current is not None:
            self.current.start_job(release_torch=False)
        if wanted:
            self._install()
        else:
            self.drop()

    def _install(self) -> None:
        try:
            from modules import sd_vae_taesd
        except ImportError:  # a webui without TAESD
            return
        if self.original is None:
            self.original = sd_vae_taesd.decoder_model
            sd_vae_taesd.decoder_model = self._decoder_model

    def _decoder_model(self):
        decoder = self.original()
        if (self.current is not None and self.current.module is decoder) or self.reason:
            return decoder  # served, or failed in this job: previews do not retry (the next job does)
        if self.current is not None:
            self.current.detach()
        self.current = WebuiTaesd(decoder, webui_progress)
        try:
            self.current.open()
            self.current.attach()
        except Exception as err:  # this decoder stays on torch; the picture is the webui's
            self.current.detach()
            self.current = None
            self.reason = f"{type(err).__name__}: {err}"
            log.warning("sd-ov: the OpenVINO TAESD decoder is unavailable: %s", err)
        return decoder

    def infotext(self) -> str | None:
        """`TAESD` when OpenVINO ran it in this job, or why torch did."""
        if self.reason:
            return f"TAESD on torch ({self.reason})"
        return self.current.infotext() if self.current is not None else None

    def after_phase(self, keep_compiled: bool) -> None:
        if self.current is not None:
            self.current.after_phase(keep_compiled)

    def drop(self) -> None:
        """The webui's own function and decoder back."""
        if self.original is not None:
            from modules import sd_vae_taesd

            if sd_vae_taesd.decoder_model == self._decoder_model:
                sd_vae_taesd.decoder_model = self.original
            self.original = None
        if self.current is not None:
            self.current.detach()
            self.current = None
