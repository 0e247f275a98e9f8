"""Calibration samples: UNet inputs captured while a real sampler makes real pictures.

INT8 ranges are only as good as the inputs they were measured on; the inputs a sampler feeds
the UNet (noisy latents at every noise level, the text embeddings of the user's prompts) are
the ones that matter. The capture wraps the UNet and keeps its inputs; an already compiled FP32
OpenVINO UNet can be the wrapped one, which makes the capture fast.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from .compress import Sample
from .sampling import UNetFn


class CapturingUNet:
    """Calls `unet` and keeps a copy of every call's inputs."""

    def __init__(self, unet: UNetFn) -> None:
        self.unet = unet
        self.samples: list[Sample] = []

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        self.samples.append(
            {
                "x": x.detach().float().cpu().numpy().copy(),
                "timesteps": timesteps.detach().reshape(-1).float().cpu().numpy().copy(),
                "context": context.detach().float().cpu().numpy().copy(),
            }
        )
        return self.unet(x, timesteps, context)


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
