"""The webui's VAE decode (and img2img's encode) on OpenVINO, while an OpenVINO UNet serves and
Settings → OpenVINO → "VAE through OpenVINO" is on.

The webui calls `first_stage_model.decode(z)` / `.encode(x)` (its own lowvram mode wraps the same
attributes); we set them on the instance and put back whatever was there. The VAE is identified
by the checkpoint and the VAE file the webui loaded (`sd_vae.loaded_vae_file`), checked at each
job, so choosing another VAE re-exports instead of serving stale weights. Any failure or a
non-finite output runs that call on torch, with a note.
"""

from __future__ import annotations

import hashlib
import logging
import os

import torch

from sd_ov.errors import NonFiniteOutputError
from sd_ov.vae import OVVae, prepare_vae_entry

from .settings import cache_root, opt

log = logging.getLogger("sd_ov")


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


class WebuiVae:
    """OpenVINO decode/encode set on one `first_stage_model`; `detach()` undoes it."""

    def __init__(
        self, first_stage_model: torch.nn.Module, checkpoint_name: str, checkpoint_hash: str, progress
    ):
        self.module = first_stage_model
        self.checkpoint_name = checkpoint_name
        self.checkpoint_hash = checkpoint_hash
        self.progress = progress
        self.identity: tuple[str, str] | None = None
        self.ov: OVVae | None = None
        self.saved: dict[str, object] = {}
        self.calls = {"decode": 0, "encode": 0}
        self.torch_reason: str | None = None

    def sync(self) -> None:
        """At each job: (re)load the OpenVINO VAE when the webui's VAE changed; attach."""
        identity = vae_identity(self.checkpoint_hash)
        if identity != self.identity or self.ov is None:
            self.detach()
            name, digest = identity
            entry = prepare_vae_entry(
                self.module, cache_root(), f"{self.checkpoint_name}-vae-{name}", digest, self.progress
            )
            # f32 on every device: f16 VAEs give black or NaN pictures (the webui's own --no-half-vae)
            self.ov = OVVae(entry, device=str(opt("sd_ov_device")), precision="f32", progress=self.progress)
            self.identity = identity
        self.attach()
        self.calls = {"decode": 0, "encode": 0}
        self.torch_reason = None

    def attach(self) -> None:
        if self.saved:
            return
        for name in ("decode", "encode"):
            self.saved[name] = vars(self.module).get(name)  # the webui's lowvram wrapper, or none
        self.module.decode = self._decode
        self.module.encode = self._encode

    def _torch(self, name: str):
        saved = self.saved.get(name)
        return saved if saved is not None else getattr(type(self.module), name).__get__(self.module)

    def _served(self, name: str, value: torch.Tensor):
        try:
            out = getattr(self.ov, name)(value)
            if not bool(torch.isfinite(out).all()):
                raise NonFiniteOutputError("the OpenVINO VAE returned NaN/inf")
            self.calls[name] += 1
            return out
        except Exception as err:
            self.torch_reason = f"{type(err).__name__}: {err}"
            log.warning("sd-ov: VAE %s on torch: %s", name, self.torch_reason)
            return None

    def _decode(self, z, *args, **kwargs):
        out = None if args or kwargs else self._served("decode", z)
        return out if out is not None else self._torch("decode")(z, *args, **kwargs)

    def _encode(self, x, *args, **kwargs):
        moments = None if args or kwargs else self._served("encode", x)
        if moments is None:
            return self._torch("encode")(x, *args, **kwargs)
        from ldm.modules.distributions.distributions import DiagonalGaussianDistribution

        return DiagonalGaussianDistribution(moments)

    def infotext(self) -> str | None:
        """What the VAE did in this job: `decode, encode` on OpenVINO, or why torch did it."""
        served = [name for name, n in self.calls.items() if n]
        if self.torch_reason:
            return f"torch ({self.torch_reason})"
        return ", ".join(served) or None

    def detach(self) -> None:
        if self.saved:
            for name, saved in self.saved.items():
                if saved is None:
                    vars(self.module).pop(name, None)
                else:
                    setattr(self.module, name, saved)
            self.saved = {}
        if self.ov is not None:
            self.ov.release()
            self.ov = None
