"""Forge's VAE decode on OpenVINO while an OpenVINO UNet serves and Settings → OpenVINO → "VAE
through OpenVINO" is on.

Forge's model decodes in `sd_model.decode_first_stage(x)` (its VAE patcher's `process_out`, then
`decode`, pictures clamped to [-1, 1]); that method is set on the model instance for the job and the
class's own put back afterwards. The IR is exported from ldm's modules loaded with the checkpoint
file's `first_stage_model.*` weights (Forge's VAE class is its own), the same entry A1111 uses for
that checkpoint's baked VAE, so Optimize's INT8 decoder made in A1111 serves here too ("auto").

Not served, said in the infotext: a VAE or text encoder chosen in Forge's "VAE / Text Encoder"
list (the weights then are not the checkpoint's), and img2img's encode (Forge samples the
posterior inside its own VAE; it stays Forge's). Forge's torch VAE keeps its weights (160 MB, in
Forge's own layout: nothing to read them back from).
"""

from __future__ import annotations

from pathlib import Path

import torch
from modules import shared

from sd_ov import OVVae, find_int8_decoder, prepare_vae_entry, vae_from_checkpoint, vae_precision

from .companions import Companions
from .component import ServedComponent
from .forge_text_encoder import ForgeTextEncoder, forge_sd1_engine
from .progress import cancellable_progress
from .settings import cache_root, opt


def forge_vae_refusal() -> str | None:
    """Why Forge's VAE is not the checkpoint's baked one (None: it is)."""
    modules = [m for m in (getattr(shared.opts, "forge_additional_modules", None) or []) if m]
    if modules:
        names = ", ".join(Path(str(m)).name for m in modules)
        return f"a VAE or text encoder chosen in Forge's VAE / Text Encoder list ({names})"
    return None


class ForgeVae(ServedComponent):
    """OpenVINO's decode set as `decode_first_stage` on Forge's model object; `detach()` undoes it."""

    methods = ("decode_first_stage",)
    what = "VAE"

    def __init__(self, sd_model, checkpoint_name: str, checkpoint_hash: str, checkpoint_file: str, progress):
        super().__init__(sd_model, progress)
        self.checkpoint_name = checkpoint_name
        self.checkpoint_hash = checkpoint_hash
        self.checkpoint_file = checkpoint_file
        self.identity: tuple | None = None

    def sync(self, release_torch: bool) -> None:
        """At each job: (re)open when the device or precision changed, or an INT8 decoder came."""
        device, choice = str(opt("sd_ov_device")), str(opt("sd_ov_vae_precision"))
        entry = prepare_vae_entry(
            lambda: vae_from_checkpoint(self.checkpoint_file),
            cache_root(),
            f"{self.checkpoint_name}-vae-baked",
            self.checkpoint_hash,
            cancellable_progress,
        )
        decoder = find_int8_decoder(entry) if choice == "auto" else None
        identity = (entry.path, device, vae_precision(device, choice), decoder and decoder.path)
        if identity != self.identity or self.ov is None:
            self.detach()
            self.ov = OVVae(
                entry, device=device, precision=identity[2], progress=self.progress, decoder_entry=decoder
            )
            self.identity = identity
        self.attach()
        self.start_job(release_torch)

    def infotext(self) -> str | None:
        served = super().infotext()
        if not served or self.torch_reason or self.ov is None:
            return served
        if self.ov.decoder_int8:
            return served.replace("decode", "decode (int8)", 1)
        return served if self.ov.precision == "f32" else f"{served} ({self.ov.precision})"

    def _decode_first_stage(self, x, *args, **kwargs):
        out = None
        if not args and not kwargs:
            z = self.module.forge_objects.vae.first_stage_model.process_out(x)
            out = self.served("decode", lambda: self.ov.decode(z.float()))
        if out is None:
            return self.torch_method("decode_first_stage")(x, *args, **kwargs)
        return (torch.clamp((out + 1.0) / 2.0, min=0.0, max=1.0) * 2.0 - 1.0).to(x)  # as Forge's VAE clamps


class ForgeCompanions(Companions):
    """Forge's companions of the OpenVINO UNet: its VAE decode (`ForgeVae`) and its SD1.x text
    engine's transformer (`forge_text_encoder.py`). SDXL's and SD2's text encoders stay Forge's:
    its engines read pooled outputs and unnormed layers there, not served in Forge yet."""

    def start_job(self, source, note) -> None:
        model = shared.sd_model
        wanted = bool(opt("sd_ov_vae")) and source is not None
        refusal = forge_vae_refusal() if wanted else None
        if refusal:
            note(f"VAE on torch: {refusal}")
        wanted = wanted and not refusal
        self.vae = self._sync(self.vae, "VAE", model, wanted, ForgeVae, False, source, note)
        engine = forge_sd1_engine(model)
        wanted = bool(opt("sd_ov_text_encoder")) and source is not None and not refusal
        if refusal and opt("sd_ov_text_encoder"):
            note(f"text encoder on torch: {refusal}")
        elif opt("sd_ov_text_encoder") and engine is None:
            note("text encoders: Forge's own (SDXL's and SD2's are not served in Forge yet)")
        current = self.text_encoders[0] if self.text_encoders else None
        served = self._sync(current, "text encoder", engine, wanted, ForgeTextEncoder, False, source, note)
        self.text_encoders = [served] if served is not None else []
