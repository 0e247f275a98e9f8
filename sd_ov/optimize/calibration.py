"""Calibration samples: UNet inputs captured while a real sampler makes real pictures.

INT8 ranges are only as good as the inputs they were measured on; the inputs a sampler feeds
the UNet (noisy latents at every noise level, the text embeddings of the user's prompts) are
the ones that matter. The capture wraps the UNet and keeps its inputs; an already compiled FP32
OpenVINO UNet can be the wrapped one, which makes the capture fast.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from ..graphs.ldm_unet import Sample
from ..progress import ProgressFn, silent
from ..store.unet_spec import UNetSpec
from .sampling import UNetFn, sample_euler


class CapturingUNet:
    """Calls `unet` and keeps a copy of every call's inputs."""

    def __init__(self, unet: UNetFn) -> None:
        self.unet = unet
        self.samples: list[Sample] = []

    def __call__(
        self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, *y: torch.Tensor
    ) -> torch.Tensor:
        """y: SDXL's vector conditioning, kept too (the IR's fourth input)."""
        sample = {
            "x": x.detach().float().cpu().numpy().copy(),
            "timesteps": timesteps.detach().reshape(-1).float().cpu().numpy().copy(),
            "context": context.detach().float().cpu().numpy().copy(),
        }
        if y:
            sample["y"] = y[0].detach().float().cpu().numpy().copy()
        self.samples.append(sample)
        return self.unet(x, timesteps, context, *y)


def spread(samples: Sequence[Sample], count: int) -> list[Sample]:
    """`count` samples evenly spread over the captured calls (all noise levels represented)."""
    if count >= len(samples):
        return list(samples)
    idx = np.linspace(0, len(samples) - 1, count).round().astype(int)
    return [samples[i] for i in idx]


def digest(samples: Sequence[Sample]) -> str:
    """A short hash of the samples: part of a calibrated recipe's cache key."""
    h = hashlib.sha256()
    for sample in samples:
        for name in sorted(sample):
            h.update(name.encode())
            h.update(np.ascontiguousarray(sample[name]).tobytes())
    return h.hexdigest()[:12]


def random_prompt_capture(
    spec: UNetSpec, prompts: int = 4, steps: int = 8, size: tuple[int, int] = (256, 256), seed: int = 0
):
    """A capture function for use without the webui: Euler sampling of `prompts` random text
    embeddings (there is no text encoder here), latent size = picture size / 8.

    Inside the webui the captures come from the webui's own sampler and the user's prompts.
    """

    def capture(unet: UNetFn, progress: ProgressFn = silent) -> list[Sample]:
        capturing = CapturingUNet(unet)
        gen = torch.Generator().manual_seed(seed)
        width, height = size
        for i in range(prompts):
            progress(f"calibration picture {i + 1}/{prompts} ({width}x{height}, {steps} steps)", i / prompts)
            cond = torch.randn(1, 77, spec.context_dim, generator=gen)
            uncond = torch.randn(1, 77, spec.context_dim, generator=gen) * 0.5
            noise = torch.randn(1, spec.in_channels, height // 8, width // 8, generator=gen)
            unet_fn = capturing
            if spec.adm_channels:  # SDXL: a vector per prompt too (cond, uncond: the sampler's batch)
                y = torch.randn(2, spec.adm_channels, generator=gen)
                unet_fn = functools.partial(_with_y, capturing, y)
            sample_euler(unet_fn, noise, cond, uncond, steps=steps)
        progress(f"captured {len(capturing.samples)} UNet calls", 1.0)
        return capturing.samples

    return capture


def _with_y(unet, y: torch.Tensor, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor):
    return unet(x, timesteps, context, y)


def default_prompts() -> list[str]:
    """The varied prompts shipped for calibration (subjects, styles, lighting, media)."""
    from importlib import resources

    text = resources.files("sd_ov").joinpath("calibration_prompts.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]
