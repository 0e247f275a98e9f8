"""A minimal SD sampler (LDM noise schedule, classifier-free guidance, Euler) for the standalone
demo, the benches and calibration: it calls the UNet exactly as the webui's k-diffusion samplers
do (x scaled by c_in, timesteps from sigmas, cond and uncond batched as 2B).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

UNetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def ldm_sigmas(n: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.012) -> torch.Tensor:
    """Noise levels of SD1/SD2's training schedule ("scaled linear" betas)."""
    betas = torch.linspace(linear_start**0.5, linear_end**0.5, n, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt().float()


class Denoiser:
    """k-diffusion's CompVisDenoiser with CFG: eps-prediction UNet → denoised latent; with
    `v=True` its CompVisVDenoiser (SD2 768-v's v-prediction)."""

    def __init__(self, unet: UNetFn, cfg_scale: float = 7.0, v: bool = False) -> None:
        self.unet = unet
        self.cfg_scale = cfg_scale
        self.v = v
        self.train_sigmas = ldm_sigmas()
        self.log_sigmas = self.train_sigmas.log()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high = low + 1
        lo, hi = self.log_sigmas[low], self.log_sigmas[high]
        w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
        return ((1 - w) * low + w * high).view(sigma.shape)

    def schedule(self, steps: int) -> torch.Tensor:
        """Evenly spaced timesteps from the noisiest down, then 0 (k-diffusion `get_sigmas`)."""
        t = torch.linspace(len(self.train_sigmas) - 1, 0, steps)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]
        return torch.cat([log_sigma.exp(), torch.zeros(1)])

    def __call__(
        self, x: torch.Tensor, sigma: float, cond: torch.Tensor, uncond: torch.Tensor
    ) -> torch.Tensor:
        batch = x.shape[0]
        sig = torch.full((2 * batch,), float(sigma))
        c_in = 1.0 / (sig**2 + 1) ** 0.5
        x_in = torch.cat([x, x]) * c_in[:, None, None, None]
        out = self.unet(x_in, self.sigma_to_t(sig), torch.cat([cond, uncond]))
        if self.v:  # sigma_data 1: denoised = x * c_skip + v * c_out
            sig2 = float(sigma) ** 2 + 1
            out = torch.cat([x, x]) / sig2 - out * (float(sigma) / sig2**0.5)
            den_cond, den_uncond = out.chunk(2)
            return den_uncond + self.cfg_scale * (den_cond - den_uncond)
        eps_cond, eps_uncond = out.chunk(2)
        eps = eps_uncond + self.cfg_scale * (eps_cond - eps_uncond)
        return x - eps * float(sigma)


@dataclass
class SampleResult:
    latent: torch.Tensor
    step_seconds: list[float] = field(default_factory=list)


def sample_euler(
    unet: UNetFn,
    noise: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    steps: int = 20,
    cfg_scale: float = 7.0,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    v: bool = False,
) -> SampleResult:
    """Euler sampling from pure noise; times each step (one batched UNet call per step)."""
    denoiser = Denoiser(unet, cfg_scale, v)
    sigmas = denoiser.schedule(steps)
    x = noise * sigmas[0]
    result = SampleResult(latent=x)
    with torch.no_grad():
        for i in range(steps):
            started = time.perf_counter()
            denoised = denoiser(x, float(sigmas[i]), cond, uncond)
            d = (x - denoised) / sigmas[i]
            x = x + d * (sigmas[i + 1] - sigmas[i])
            result.step_seconds.append(time.perf_counter() - started)
            if on_step:
                on_step(i, x)
    result.latent = x
    return result


def sample_heun(
    unet: UNetFn,
    noise: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    steps: int = 10,
    cfg_scale: float = 7.0,
) -> SampleResult:
    """Heun (k-diffusion's sample_heun, no churn): two UNet calls per step, one on the last."""
    denoiser = Denoiser(unet, cfg_scale)
    sigmas = denoiser.schedule(steps)
    x = noise * sigmas[0]
    result = SampleResult(latent=x)
    with torch.no_grad():
        for i in range(steps):
            started = time.perf_counter()
            d = (x - denoiser(x, float(sigmas[i]), cond, uncond)) / sigmas[i]
            dt = sigmas[i + 1] - sigmas[i]
            if sigmas[i + 1] == 0:
                x = x + d * dt
            else:
                x_2 = x + d * dt
                d_2 = (x_2 - denoiser(x_2, float(sigmas[i + 1]), cond, uncond)) / sigmas[i + 1]
                x = x + (d + d_2) / 2 * dt
            result.step_seconds.append(time.perf_counter() - started)
    result.latent = x
    return result


def sample_lcm(
    unet: UNetFn, noise: torch.Tensor, cond: torch.Tensor, steps: int = 4, seed: int = 0
) -> SampleResult:
    """k-diffusion's sample_lcm (the webui's LCM sampler) at CFG 1: one UNet call per step on the
    prompt alone (batch 1, no uncond), the denoised latent renoised to the next sigma."""
    denoiser = Denoiser(unet, 1.0)
    sigmas = denoiser.schedule(steps)
    gen = torch.Generator().manual_seed(seed)
    x = noise * sigmas[0]
    result = SampleResult(latent=x)
    with torch.no_grad():
        for i in range(steps):
            started = time.perf_counter()
            sigma = torch.full((x.shape[0],), float(sigmas[i]))
            c_in = (1.0 / (sigma**2 + 1) ** 0.5)[:, None, None, None]
            eps = unet(x * c_in, denoiser.sigma_to_t(sigma), cond)
            x = x - eps * float(sigmas[i])
            if sigmas[i + 1] > 0:
                x = x + float(sigmas[i + 1]) * torch.randn(x.shape, generator=gen)
            result.step_seconds.append(time.perf_counter() - started)
    result.latent = x
    return result


# The webui's "Approx cheap" live preview: a fixed linear map from SD1 latents to RGB.
_LATENT_RGB = torch.tensor(
    [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]
)


def latent_to_image(latent: torch.Tensor, scale: int = 8) -> np.ndarray:
    """A latent [4,h,w] as an RGB uint8 picture [h*scale, w*scale, 3], without a VAE."""
    rgb = torch.einsum("lhw,lr->hwr", latent.float().cpu(), _LATENT_RGB)
    rgb = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    return rgb.repeat(scale, axis=0).repeat(scale, axis=1)
