"""Optimize: from the loaded torch UNet to a compressed, compiled, measured OpenVINO UNet.

The steps, each with its own share of the progress bar: export the plain FP32 IR (a cache
entry of its own, which the plain option serves too), calibrate (the caller's sampler runs with
the FP32 OpenVINO UNet and its inputs are captured), compress (token merging and FFN pruning
change the graph and need a new export; INT8 reads an FP32 IR back from disk), compile for
the shapes asked for, and measure against torch. The result is one cache entry whose manifest
carries the report.

Cancelling (the progress function raises `Cancelled`) or failing at any step leaves no entry
for the recipe: the entry is written to a temporary folder and renamed only when complete, and
an entry whose measurement was cancelled is deleted again.
"""

from __future__ import annotations

import contextlib
import gc
import shutil
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import cache, engine, metrics
from .calibration import digest, spread
from .compress import Sample, compress_ir
from .export import IR_NAME, example_inputs, export_unet, save_ir
from .ldm_unet import UNetSpec, describe, traceable
from .manifest import Report
from .memory import peak_rss_mib, trim_heap
from .ov_core import get_core
from .progress import ProgressFn, scaled, silent
from .prune import ffn_activity, magnitude_pruned_copy, neurons_to_keep, pruned_ffn
from .recipe import Recipe
from .runtime import OVUNet
from .sampling import UNetFn
from .tome import token_merging
from .torch_weights import ModuleWeights

# Runs a sampler with the given (FP32 OpenVINO) UNet and returns the UNet inputs it captured.
CaptureFn = Callable[[UNetFn, ProgressFn], list[Sample]]
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


def _export_graph(
    unet: torch.nn.Module,
    spec: UNetSpec,
    recipe: Recipe,
    samples: Sequence[Sample],
    folder: Path,
    progress: ProgressFn,
) -> dict[str, float]:
    """Export the UNet with the recipe's graph changes (token merging, pruning) into `folder`."""
    timings: dict[str, float] = {}
    model = unet
    with contextlib.ExitStack() as stack:
        if recipe.prune == "ffn":
            progress("measuring FFN neuron activity on the calibration samples", 0.0)
            started = time.perf_counter()
            keep = neurons_to_keep(ffn_activity(unet, samples), recipe.prune_ratio)
            timings["ffn_stats_s"] = time.perf_counter() - started
            stack.enter_context(pruned_ffn(unet, keep))
        elif recipe.prune == "magnitude":
            progress("pruning the smallest weights (NNCF magnitude pruning)", 0.0)
            started = time.perf_counter()
            model = magnitude_pruned_copy(unet, recipe.prune_ratio, example_inputs(spec))
            timings["magnitude_prune_s"] = time.perf_counter() - started
        if recipe.tome > 0:
            stack.enter_context(token_merging(model, recipe.tome))
        timings.update(export_unet(model, spec, folder, scaled(progress, 0.2, 1.0)))
    del model
    gc.collect()
    return timings


@contextlib.contextmanager
def torch_weights_in(weights: ModuleWeights | None, progress: ProgressFn = silent) -> Iterator[None]:
    """The torch UNet's weights in memory inside the block, freed again after it: Optimize needs
    torch only to export a graph and to measure, and NNCF and calibration hold their own copy."""
    if weights is None:
        yield
        return
    weights.ensure(progress)
    try:
        yield
    finally:
        weights.release(progress)


def build_recipe_ir(
    unet: torch.nn.Module,
    spec: UNetSpec,
    recipe: Recipe,
    fp32_ir: Path,
    samples: Sequence[Sample],
    folder: Path,
    progress: ProgressFn = silent,
    torch_weights: ModuleWeights | None = None,
) -> dict[str, float]:
    """Write the recipe's `unet.xml` into `folder`; returns the timings of each stage.

    Without graph changes INT8 compresses the plain FP32 IR as it is; with them the modified UNet
    is exported first (into a subfolder, removed afterwards).
    """
    timings: dict[str, float] = {}
    source = fp32_ir
    if recipe.changes_graph:
        target = folder if recipe.int8 == "off" else folder / "graph"
        target.mkdir(exist_ok=True)
        with torch_weights_in(torch_weights, progress):
            timings.update(_export_graph(unet, spec, recipe, samples, target, scaled(progress, 0.0, 0.4)))
        source = target / IR_NAME
    if recipe.int8 != "off":
        progress(f"compressing to INT8 ({recipe.int8}, {len(samples)} samples)", 0.4)
        started = time.perf_counter()
        compress_ir(source, folder / IR_NAME, recipe.int8, samples, recipe.smooth_quant)
        timings["compress_s"] = time.perf_counter() - started
    elif not recipe.changes_graph:  # a precision of its own only: the FP32 IR, 16-bit on disk
        save_ir(get_core().read_model(str(source)), folder / IR_NAME, fp16=True)
    if source.parent != folder and source != fp32_ir:
        shutil.rmtree(source.parent)
    progress("IR written", 1.0)
    return timings


def measure_entry(
    unet: torch.nn.Module,
    runtime: OVUNet,
    spec: UNetSpec,
    measure: Measure,
    sample_image: ImageFn | None,
    progress: ProgressFn,
    torch_weights: ModuleWeights | None = None,
) -> dict[str, Any]:
    """Seconds per UNet call of torch and of the recipe, relative L2, and the sample picture.

    OpenVINO is measured first, then its compiled model goes before torch's weights come back:
    the peak is the larger of the two, not their sum."""
    gen = torch.Generator().manual_seed(0)
    latent = (measure.height // 8, measure.width // 8)
    inputs = (
        torch.randn(measure.batch, spec.in_channels, *latent, generator=gen),
        torch.full((measure.batch,), 500.0),
        torch.randn(measure.batch, measure.tokens, spec.context_dim, generator=gen),
    )
    progress("timing the OpenVINO UNet", 0.0)
    ov_s, out = median_call(runtime, inputs, measure.calls)
    image = None
    if sample_image is not None:
        progress("sample picture with the OpenVINO UNet", 0.25)
        image = sample_image(runtime)
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
    }
    if sample_image is not None:
        progress("sample picture with torch", 0.75)
        with torch.no_grad(), traceable(unet):
            reference_image = sample_image(unet)
        report["psnr_db"] = metrics.psnr(image, reference_image)
        report["ssim"] = metrics.ssim(image, reference_image)
    return report


def optimize(
    unet: torch.nn.Module,
    cache_root: str | Path,
    checkpoint_name: str,
    checkpoint_hash: str,
    recipe: Recipe,
    capture: CaptureFn | None = None,
    *,
    device: str = "CPU",
    shapes: Sequence[tuple[int, int, int, int]] = (),
    measure: Measure | None = Measure(),
    sample_image: ImageFn | None = None,
    progress: ProgressFn = silent,
    torch_weights: ModuleWeights | None = None,
) -> cache.CacheEntry:
    """Make (or remake) the cache entry of `recipe` for this checkpoint, with its report.

    `shapes` are (batch, latent height, latent width, tokens) to compile ahead, so the blobs are
    on disk before the first picture. Peak memory stays near the largest of: the torch UNet plus
    one export, or the torch UNet plus NNCF's working copy of the IR. With `torch_weights` (the
    torch UNet's weights and their checkpoint file), they leave memory while calibration and NNCF
    run and come back for graph exports and the measurement: the peak is then near the largest of
    the torch UNet, or the compiled FP32 model, or NNCF's copy, not their sum. They are in memory
    again when this returns or raises.
    """
    try:
        return _optimize(
            unet,
            cache_root,
            checkpoint_name,
            checkpoint_hash,
            recipe,
            capture,
            device,
            shapes,
            measure,
            sample_image,
            progress,
            torch_weights,
        )
    finally:
        if torch_weights is not None:
            torch_weights.ensure(progress)


def _optimize(
    unet: torch.nn.Module,
    cache_root: str | Path,
    checkpoint_name: str,
    checkpoint_hash: str,
    recipe: Recipe,
    capture: CaptureFn | None,
    device: str,
    shapes: Sequence[tuple[int, int, int, int]],
    measure: Measure | None,
    sample_image: ImageFn | None,
    progress: ProgressFn,
    torch_weights: ModuleWeights | None,
) -> cache.CacheEntry:
    started = time.perf_counter()
    spec = describe(unet)
    root = Path(cache_root)
    fp32 = engine.prepare_entry(
        unet, root, checkpoint_name, checkpoint_hash, Recipe(), scaled(progress, 0.0, 0.25)
    ).entry

    if torch_weights is not None:
        torch_weights.release(progress)
    samples: list[Sample] = []
    if recipe.needs_calibration:
        if capture is None:
            raise ValueError(f"recipe {recipe.label()} needs calibration: no capture function given")
        progress("calibrating: sampling with the FP32 OpenVINO UNet", 0.25)
        runtime = engine.open_unet(fp32, device=device)
        try:
            samples = spread(capture(runtime, scaled(progress, 0.25, 0.4)), recipe.samples)
        finally:
            runtime.release()
            del runtime
            gc.collect()
        if not samples:
            raise ValueError("calibration captured no UNet calls")

    entry = fp32
    if not recipe.is_plain:
        key = cache.EntryKey(checkpoint_name, checkpoint_hash, recipe)

        def build(folder: Path) -> dict[str, Any]:
            timings = build_recipe_ir(
                unet, spec, recipe, fp32.xml_path, samples, folder, scaled(progress, 0.4, 0.85), torch_weights
            )
            calibration = {"samples": len(samples), "digest": digest(samples)} if samples else None
            return {"unet": spec, "timings": timings, "label": recipe.label(), "calibration": calibration}

        with cache.entry_lock(root, key, progress):
            entry = cache.write(root, key, build)

    try:
        runtime = engine.open_unet(
            entry, device=device, precision=recipe.precision, progress=scaled(progress, 0.85, 0.9)
        )
        for batch, height, width, tokens in shapes:
            runtime.prepare(batch, height, width, tokens)
        if measure is not None:
            runtime.prepare(measure.batch, measure.height // 8, measure.width // 8, measure.tokens)
        measured: dict[str, Any] = {}
        if measure is not None:
            measured = measure_entry(
                unet, runtime, spec, measure, sample_image, scaled(progress, 0.9, 1.0), torch_weights
            )
        device_name = runtime.device
        runtime.release()
        report = Report(
            label=recipe.label(),
            device=device_name,
            optimize_s=time.perf_counter() - started,
            peak_rss_mib=peak_rss_mib(),
            disk_mib=entry.manifest.disk_bytes / 2**20,
            **measured,
        )
        entry = cache.update_report(entry, report)
    except BaseException:
        if entry is not fp32:  # the recipe's entry is only kept with its report
            cache.delete(entry.path)
        raise
    progress(f"optimized: {recipe.label()}", 1.0)
    return entry


def recipe_entries(cache_root: str | Path, checkpoint_name: str | None = None) -> list[cache.CacheEntry]:
    """Valid cache entries with one UNet IR (not DeepCache's pairs, not VAEs), optionally of one
    checkpoint."""
    return [
        entry
        for entry in cache.list_entries(Path(cache_root))
        if entry.manifest.component == "unet"
        and entry.manifest.recipe.deepcache_branch is None
        and checkpoint_name in (None, entry.manifest.checkpoint_name)
    ]
