"""The webui's VAE decode (and img2img's encode) on OpenVINO, while an OpenVINO UNet serves and
Settings → OpenVINO → "VAE through OpenVINO" is on.

The webui calls `first_stage_model.decode(z)` / `.encode(x)` (its own lowvram mode wraps the same
attributes); we set them on the instance and put back whatever was there. The VAE is identified
by the checkpoint and the VAE file the webui loaded (`sd_vae.loaded_vae_file`), checked at each
job, so choosing another VAE re-exports instead of serving stale weights. The torch VAE's
weights leave memory while OpenVINO serves; loading another VAE into it, or the webui keeping a
copy of it, brings them back first (`sd_ov.runtime.torch_weights.ModuleWeights`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from sd_ov import CheckpointTensors, OVVae, find_int8_decoder, prepare_vae_entry, vae_precision

from .component import ServedComponent
from .offload import WebuiWeights
from .progress import cancellable_progress
from .settings import cache_root, opt

CHECKPOINT_VAE_PREFIX = "first_stage_model."


def loaded_vae_file() -> str | None:
    try:
        from modules import sd_vae
    except ImportError:
        return None
    return getattr(sd_vae, "loaded_vae_file", None)


def vae_identity(checkpoint_hash: str) -> tuple[str, str]:
    """(name, hash) of the VAE in use: the checkpoint's own, or an external file (by path, size
    and time, cheaper than hashing its weights at every job)."""
    path = loaded_vae_file()
    if not path:
        return "baked", checkpoint_hash
    try:
        st = os.stat(path)
        stamp = f"{st.st_size}-{st.st_mtime_ns}"
    except OSError:
        stamp = "missing"
    digest = hashlib.sha256(f"{checkpoint_hash}|{os.path.abspath(path)}|{stamp}".encode()).hexdigest()
    return os.path.splitext(os.path.basename(path))[0], digest


def vae_weights_source(checkpoint_file: str) -> CheckpointTensors:
    """Where the VAE's weights are read back from: the external VAE file (its keys bare), or the
    checkpoint's own VAE."""
    path = loaded_vae_file()
    if path:
        return CheckpointTensors(Path(path), "")
    return CheckpointTensors(Path(checkpoint_file), CHECKPOINT_VAE_PREFIX)


def vae_entry(first_stage_model: torch.nn.Module, checkpoint_name: str, checkpoint_hash: str, progress):
    """The FP32 entry of the webui's VAE (exported from `first_stage_model` when absent)."""
    name, digest = vae_identity(checkpoint_hash)
    return prepare_vae_entry(
        first_stage_model, cache_root(), f"{checkpoint_name}-vae-{name}", digest, progress
    )


class WebuiVae(ServedComponent):
    """OpenVINO decode/encode set on one `first_stage_model`; `detach()` undoes it."""

    methods = ("decode", "encode")
    what = "VAE"

    def __init__(
        self,
        first_stage_model: torch.nn.Module,
        checkpoint_name: str,
        checkpoint_hash: str,
        checkpoint_file: str,
        progress,
    ):
        super().__init__(first_stage_model, progress)
        self.checkpoint_name = checkpoint_name
        self.checkpoint_hash = checkpoint_hash
        self.checkpoint_file = checkpoint_file
        self.identity: tuple[str, str] | None = None

    def sync(self, release_torch: bool) -> None:
        """At each job: (re)load the OpenVINO VAE when the webui's VAE changed; attach."""
        identity = vae_identity(self.checkpoint_hash)
        device = str(opt("sd_ov_device"))
        choice = str(opt("sd_ov_vae_precision"))
        precision = vae_precision(device, choice)
        if self.ov is not None and self.ov.fell_back is None and self.ov.precision != precision:
            self.identity = None  # the setting changed: opened again (detach releases the old one)
        # "auto" decodes with the INT8 decoder Optimize made of this VAE, if any (`vae_int8`)
        decoder = None
        if self.ov is not None and identity == self.identity:
            decoder = find_int8_decoder(self.ov.entry) if choice == "auto" else None
            if (decoder and decoder.path) != (self.ov.decoder_entry and self.ov.decoder_entry.path):
                self.identity = None  # made (or removed) since it was opened
        if identity != self.identity or self.ov is None:
            self.detach()  # the torch weights back before anything is exported from them
            entry = vae_entry(self.module, self.checkpoint_name, self.checkpoint_hash, cancellable_progress)
            decoder = find_int8_decoder(entry) if choice == "auto" else None
            # never f16: f16 VAEs give black or NaN pictures (the webui's own --no-half-vae); bf16
            # where the CPU runs it faster (`vae_precision`)
            self.ov = OVVae(
                entry, device=device, precision=precision, progress=self.progress, decoder_entry=decoder
            )
            self.identity = identity
            self.weights = WebuiWeights(self.module, vae_weights_source(self.checkpoint_file), "torch VAE")
        self.attach()
        self.start_job(release_torch)

    def infotext(self) -> str | None:
        """`decode` (f32), `decode (bf16)`, `decode (int8)` (Optimize's INT8 decoder; its float
        parts at the VAE precision; `encode (int8)` its encoder), or why a bf16 model went to f32."""
        served = super().infotext()
        if not served or self.torch_reason or self.ov is None:
            return served
        if self.ov.fell_back:
            return f"{served} ({self.ov.fell_back})"
        if self.ov.decoder_int8 and "decode" in served:
            served = served.replace("decode", "decode (int8)", 1)
        if self.ov.encoder_int8 and "encode" in served:
            served = served.replace("encode", "encode (int8)", 1)
        if self.ov.decoder_int8 or self.ov.encoder_int8:
            return served
        return served if self.ov.precision == "f32" else f"{served} ({self.ov.precision})"

    def _decode(self, z, *args, **kwargs):
        out = None if args or kwargs else self.served("decode", lambda: self.ov.decode(z))
        return out if out is not None else self.torch_method("decode")(z, *args, **kwargs)

    def _encode(self, x, *args, **kwargs):
        moments = None if args or kwargs else self.served("encode", lambda: self.ov.encode(x))
        if moments is None:
            return self.torch_method("encode")(x, *args, **kwargs)
        from ldm.modules.distributions.distributions import DiagonalGaussianDistribution

        return DiagonalGaussianDistribution(moments)
