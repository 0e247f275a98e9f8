"""`python -m sd_ov demo`: torch vs OpenVINO on a small SD-architecture UNet it builds itself.

No downloads: the UNet has seeded random weights and the "prompt" is a seeded random text
embedding. The figures measure speed and fidelity of OpenVINO *to torch on the same weights*, and
the picture draws them (`demo_chart`): a random-weight latent would look like static.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..graphs.ldm_unet import build_unet, describe, load_config
from ..optimize import metrics
from ..optimize.sampling import latent_to_image, sample_euler
from ..progress import console
from ..runtime.unet import DEFAULT_SHAPE_POLICY
from ..serve import engine
from .demo_chart import draw_chart


@dataclass
class DemoResult:
    torch_s_per_step: float
    ov_s_per_step: float
    unet_rel_l2: float
    unet_max_abs: float
    latent_rel_l2: float
    image_psnr: float
    export_s: float
    image_path: Path

    @property
    def speedup(self) -> float:
        return self.torch_s_per_step / self.ov_s_per_step


def run_demo(
    *,
    config: str = "tiny",
    size: int = 256,
    steps: int = 8,
    seed: int = 0,
    device: str = "CPU",
    precision: str = "f32",
    shape_policy: str = DEFAULT_SHAPE_POLICY,
    cache_dir: str | Path = "sd_ov_cache",
    out: str | Path = "sd_ov_demo.png",
) -> DemoResult:
    unet = build_unet(load_config(config), seed=seed)
    spec = describe(unet)
    gen = torch.Generator().manual_seed(seed + 1)
    cond = torch.randn(1, 77, spec.context_dim, generator=gen)
    uncond = torch.randn(1, 77, spec.context_dim, generator=gen) * 0.5
    noise = torch.randn(1, spec.in_channels, size // 8, size // 8, generator=gen)

    started = time.perf_counter()
    prepared = engine.prepare_entry(
        unet, cache_dir, f"demo-{config}", engine.weights_hash(unet), progress=console
    )
    export_s = time.perf_counter() - started
    ov_unet = engine.open_unet(prepared.entry, device, precision, shape_policy, progress=console)

    def torch_unet(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return unet(x, t, c)

    # One UNet call on identical inputs: the direct fidelity figure. It also warms both up.
    x = torch.randn(2, spec.in_channels, size // 8, size // 8, generator=gen)
    t = torch.tensor([999.0, 999.0])
    c = torch.cat([cond, uncond])
    with torch.no_grad():
        ref = unet(x, t, c)
    out_ov = ov_unet(x, t, c)

    torch_run = sample_euler(torch_unet, noise, cond, uncond, steps=steps)
    ov_run = sample_euler(ov_unet, noise, cond, uncond, steps=steps)

    torch_img = latent_to_image(torch_run.latent[0])
    ov_img = latent_to_image(ov_run.latent[0])
    latent_rel_l2 = metrics.rel_l2(ov_run.latent, torch_run.latent)
    title = (
        f"sd-ov demo: torch vs OpenVINO, {config} UNet (random weights), {size}x{size}, {steps} Euler steps"
    )
    out = draw_chart(
        out,
        title,
        torch_run.step_seconds,
        ov_run.step_seconds,
        ov_run.latent[0],
        torch_run.latent[0],
        latent_rel_l2,
    )
    return DemoResult(
        torch_s_per_step=statistics.median(torch_run.step_seconds),
        ov_s_per_step=statistics.median(ov_run.step_seconds),
        unet_rel_l2=metrics.rel_l2(out_ov, ref),
        unet_max_abs=metrics.max_abs(out_ov, ref),
        latent_rel_l2=latent_rel_l2,
        image_psnr=metrics.psnr(ov_img, torch_img),
        export_s=export_s if prepared.exported else 0.0,
        image_path=out,
    )


def format_result(r: DemoResult, size: int, steps: int) -> str:
    export = f"{r.export_s:.1f} s" if r.export_s else "from cache"
    return "\n".join(
        [
            f"sd-ov demo: small SD-architecture UNet, random weights, {size}x{size}, batch 2 (cond+uncond), "
            f"{steps} Euler steps",
            f"  export to OpenVINO IR   {export}",
            f"  torch     s/step        {r.torch_s_per_step:.3f}",
            f"  OpenVINO  s/step        {r.ov_s_per_step:.3f}",
            f"  speed-up                {r.speedup:.2f}x",
            f"  UNet output rel L2      {r.unet_rel_l2:.2e}   (max abs {r.unet_max_abs:.2e})",
            f"  final latent rel L2     {r.latent_rel_l2:.2e}",
            f"  preview image PSNR      {r.image_psnr:.1f} dB",
            f"  chart (s/step, latent difference) {r.image_path}",
        ]
    )
