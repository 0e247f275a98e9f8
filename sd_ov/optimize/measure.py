"""Optimize's measurement of a recipe against torch: seconds per UNet call of each, the relative
L2 of the output, and the report's sample picture, with the peak kept to the larger of the
compiled recipe and the torch UNet (never both)."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ..graphs.traceable_unet import traceable
from ..progress import ProgressFn
from ..runtime.memory import trim_heap
from ..runtime.torch_weights import ModuleWeights
from ..runtime.unet import OVUNet
from ..store.unet_spec import UNetSpec
from . import metrics
from .sampling import UNetFn

# Makes the report's sample picture (same prompt and seed each call) with the given UNet.
ImageFn = Callable[[UNetFn], np.ndarray]


@dataclass(frozen=True)
class Measure:
    """Where speed and fidelity are measured: one UNet call of this shape (latent = size / 8)."""

    width: int = 512
    height: int = 512
    batch: int = 2
    tokens: int = 77
    calls: int = 2  # timed calls per runtime, after one warm-up; the median is reported


def median_call(fn: UNetFn, inputs: tuple[torch.Tensor, ...], calls: int) -> tuple[float, torch.Tensor]:
    """Median seconds of `calls` calls after one warm-up (which compiles a static shape)."""
    out = fn(*inputs)  # warm-up (and the compile of a static shape)
    times = []
    for _ in range(max(1, calls)):
        started = time.perf_counter()
        out = fn(*inputs)
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def measure_entry(
    unet: torch.nn.Module,
    runtime: OVUNet,
    spec: UNetSpec,
    measure: Measure,
    sample_image: ImageFn | None,
    progress: ProgressFn,
    torch_weights: ModuleWeights | None = None,
    shallow: OVUNet | None = None,
) -> dict[str, Any]:
    """Seconds per UNet call of torch and of the recipe, relative L2, and the sample picture.
    A DeepCache pair: `runtime` is its full model (the recipe's every output, and the picture),
    `shallow` is timed on the feature the full model just gave it, and its output compared with
    the full model's (they are equal when the cache is fresh).

    OpenVINO is measured first, then its compiled model goes before torch's weights come back:
    the peak is the larger of the two, not their sum."""
    gen = torch.Generator().manual_seed(0)
    latent = (measure.height // 8, measure.width // 8)
    inputs = (
        torch.randn(measure.batch, spec.in_channels, *latent, generator=gen),
        torch.full((measure.batch,), 500.0),
        torch.randn(measure.batch, measure.tokens, spec.context_dim, generator=gen),
    )
    if spec.adm_channels:  # SDXL's vector conditioning
        inputs += (torch.randn(measure.batch, spec.adm_channels, generator=gen),)
    progress("timing the OpenVINO UNet", 0.0)
    call: UNetFn = runtime if shallow is None else (lambda *args: runtime(*args)[0])
    ov_s, out = median_call(call, inputs, measure.calls)
    extra: dict[str, Any] = {}
    if shallow is not None:
        progress("timing DeepCache's shallow model", 0.1)
        full_out, feature = runtime(*inputs)
        shallow_s, shallow_out = median_call(shallow, (*inputs, feature), measure.calls)
        extra = {"shallow_s_per_step": shallow_s, "shallow_rel_l2": metrics.rel_l2(shallow_out, full_out)}
        shallow.drop_compiled()
    image = None
    if sample_image is not None:
        progress("sample picture with the OpenVINO UNet", 0.25)
        image = sample_image(call)
    runtime.drop_compiled()
    gc.collect()
    trim_heap()
    if torch_weights is not None:
        torch_weights.ensure(progress)
    progress(f"timing torch at {measure.width}x{measure.height}, batch {measure.batch}", 0.5)
    with torch.no_grad(), traceable(unet):  # torch at its fastest: SDPA attention
        torch_s, reference = median_call(unet, inputs, measure.calls)
    report: dict[str, Any] = {
        "measure": asdict(measure),
        "torch_s_per_step": torch_s,
        "s_per_step": ov_s,
        "speedup": torch_s / ov_s,
        "rel_l2": metrics.rel_l2(out, reference),
        **extra,
    }
    if sample_image is not None:
        progress("sample picture with torch", 0.75)
        with torch.no_grad(), traceable(unet):
            reference_image = sample_image(unet)
        report["psnr_db"] = metrics.psnr(image, reference_image)
        report["ssim"] = metrics.ssim(image, reference_image)
    return report
