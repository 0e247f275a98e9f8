"""The job's companions of the OpenVINO UNet: the VAE and the text encoder on OpenVINO where the
settings say so, as one per-job feature (prepared at each job's start, its memory given back
after each phase, dropped when the UNet goes).

A compiled model keeps its activation buffers between calls: measured in the webui at 512², the
OpenVINO VAE and text encoder held ~4 GiB after a job. OpenVINO's `CompiledModel.release_memory()`
gives them back and keeps the model (the SD1.5 VAE decoder at 512²: RSS 1684 → 636 MiB in 0.13 s,
nothing compiled at the next decode; AMD EPYC Zen 4, 2026-12-02). So `release` keeps every model
compiled and gives its buffers back after its phase; `lowvram` drops the compiled models too (the
lightest: they compile again, from the blob cache); `none` keeps everything.
"""

from __future__ import annotations

import logging

from modules import shared

from .errors import explain
from .progress import webui_progress
from .settings import offload_mode, opt
from .taesd import TaesdDecoders
from .text_encoder import WebuiTextEncoder, text_encoder_slots
from .torch_patches import vae_refusal
from .vae import WebuiVae

log = logging.getLogger("sd_ov")


class Companions:
    """The VAE (and the webui's TAESD decoder) and the text encoders (SDXL has two) of the
    checkpoint a UNet serves."""

    def __init__(self) -> None:
        self.vae: WebuiVae | None = None
        self.taesd = TaesdDecoders()
        self.text_encoders: list[WebuiTextEncoder] = []

    @property
    def text_encoder(self) -> WebuiTextEncoder | None:
        """The first text encoder (SD1/SD2's only one)."""
        return self.text_encoders[0] if self.text_encoders else None

    def start_job(self, source, note) -> None:
        """On OpenVINO for this job where the settings say so (their torch weights freed unless
        Settings → memory keeps them), torch's otherwise; `note(text)` records why a part is not."""
        model = shared.sd_model
        release_torch = offload_mode() != "none"
        vae = getattr(model, "first_stage_model", None)
        wanted = bool(opt("sd_ov_vae"))
        refusal = vae_refusal(vae) if wanted else None
        if refusal:
            note(f"VAE on torch: {refusal}")
        wanted = wanted and not refusal
        self.vae = self._sync(self.vae, "VAE", vae, wanted, WebuiVae, release_torch, source, note)
        self.taesd.start_job(bool(opt("sd_ov_vae")) and source is not None)
        wanted = bool(opt("sd_ov_text_encoder"))
        slots = text_encoder_slots(model) if wanted else []
        kept = []
        for current in self.text_encoders:
            if current.wants_reopen() or all(current.module is not module for module, _ in slots):
                current.detach()  # the webui replaced the module, or the setting changed
            else:
                kept.append(current)
        self.text_encoders = []
        for module, prefix in slots:
            current = next((te for te in kept if te.module is module), None)

            def make(*args, prefix=prefix):
                return WebuiTextEncoder(*args, checkpoint_prefix=prefix)

            served = self._sync(current, "text encoder", module, True, make, release_torch, source, note)
            if served is not None:
                self.text_encoders.append(served)

    @staticmethod
    def _sync(current, what: str, module, wanted: bool, kind, release_torch: bool, source, note):
        """One companion: kept, made (first use, or the webui replaced the module), or dropped."""
        if current is not None and (not wanted or current.module is not module):
            current.detach()
            current = None
        if not wanted or module is None or source is None:
            return None
        try:
            if current is None:
                filename = shared.sd_model.sd_checkpoint_info.filename
                current = kind(
                    module, source.checkpoint_name, source.checkpoint_hash, filename, webui_progress
                )
            current.sync(release_torch)
            return current
        except Exception as err:  # this part stays on torch; the UNet is unaffected
            if current is not None:
                current.detach()
            note(f"{what} on torch: {explain(err)}")
            log.warning("sd-ov: the OpenVINO %s is unavailable: %s", what, err)
            return None

    def prompts_encoded(self) -> None:
        """Sampling starts: the text encoder's buffers (or model, in lowvram) go."""
        if offload_mode() != "none":
            for text_encoder in self.text_encoders:
                text_encoder.after_phase(keep_compiled=offload_mode() == "release")

    def decoded(self) -> None:
        """The VAE's buffers (or model, in lowvram) go until the next job (kept in `none`)."""
        if offload_mode() != "none":
            if self.vae is not None:
                self.vae.after_phase(keep_compiled=offload_mode() == "release")
            self.taesd.after_phase(keep_compiled=offload_mode() == "release")

    def drop(self) -> None:
        """The webui's own VAE and text encoder back, their OpenVINO models' memory given back."""
        for companion in (self.vae, *self.text_encoders):
            if companion is not None:
                companion.detach()
        self.taesd.drop()
        self.vae, self.text_encoders = None, []

    def seconds(self) -> str:
        """This job's seconds in each companion's OpenVINO calls, for the console: `text
        encoder 0.2 s, VAE decode 4.1 s` (compiles of a first use included)."""
        parts = [(f"{te.label} text encoder", te) for te in self.text_encoders]
        parts += [("VAE", self.vae), ("", self.taesd.current)]
        said = []
        for label, part in parts:
            for method, seconds in part.seconds.items() if part is not None else ():
                said.append(f"{label} {method} {seconds:.1f} s".strip())
        return ", ".join(said)

    def vae_infotext(self) -> str | None:
        """What decoded on OpenVINO in this job: the VAE (`decode`, `decode (int8)`, ...) and the
        webui's TAESD (the picture when the user chose it for decoding, and live previews)."""
        said = [self.vae.infotext() if self.vae is not None else None, self.taesd.infotext()]
        return ", ".join(text for text in said if text) or None

    def text_encoder_infotext(self) -> str | None:
        """What each text encoder did in this job: SD1's as before (`clip skip 1`), the others
        labelled (`CLIP-L: layer -2; OpenCLIP-G: layer -2, pooled`)."""
        said = [(te.label, te.infotext()) for te in self.text_encoders]
        said = [(label, text) for label, text in said if text]
        if [te.kind for te in self.text_encoders] == ["clip"]:
            return said[0][1] if said else None
        return "; ".join(f"{label}: {text}" for label, text in said) or None
