"""Optimize: from the loaded torch UNet to a compressed, compiled, measured OpenVINO UNet.

The steps, each with its own share of the progress bar: export the plain FP32 IR (a cache
entry of its own, which the plain option serves too), calibrate (the caller's sampler runs with
the FP32 UNet, from 1 GiB of weights a temporary copy at INT8 weights, `calibration_unet`, and
its inputs are captured), compress (token
merging and FFN pruning change the graph and need a new export; INT8 reads an FP32 IR back from
disk), compile for the shapes asked for, and measure against torch. The result is one cache
entry whose manifest carries the report.

Cancelling (the progress function raises `Cancelled`) or failing at any step leaves no entry
for the recipe: the entry is written to a temporary folder and renamed only when complete, and
an entry whose measurement was cancelled is deleted again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import UnsupportedModelError
from ..graphs.deepcache import FULL_IR
from ..graphs.ldm_unet import Sample, describe
from ..progress import ProgressFn, scaled, silent
from ..runtime.torch_weights import ModuleWeights
from ..serve import engine
from ..serve.preset import PRESETS
from ..store import cache
from ..store.manifest import Report
from ..store.recipe import Recipe
from ..store.unet_spec import UNetSpec
from .calibration import digest, spread
from .calibration_unet import CalibrationUNet
from .measure import ImageFn, Measure, measure_entry, median_call  # noqa: F401 (public here)
from .peak_memory import PeakSampler
from .recipe_ir import build_recipe_ir, feature_channels, ir_files
from .sampling import UNetFn

# Runs a sampler with the given (calibration) UNet and returns the UNet inputs it captured.
CaptureFn = Callable[[UNetFn, ProgressFn], list[Sample]]


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
    preset: str = "",
    cache_compiled: bool = True,
) -> cache.CacheEntry:
    """Make (or remake) the cache entry of `recipe` for this checkpoint, with its report.
    `preset`: the preset that chose the recipe, recorded in the manifest. `cache_compiled`
    False (Settings → "Keep compiled blobs on disk" off) writes no compiled blob for the shapes
    or the measurement (calibration never writes one). For SDXL an FP32 blob is another 10 GB.

    `shapes` are (batch, latent height, latent width, tokens) to compile ahead, so the blobs are
    on disk before the first picture. Peak memory stays near the largest of: the torch UNet plus
    one export, or the torch UNet plus NNCF's working copy of the IR. With `torch_weights` (the
    torch UNet's weights and their checkpoint file), they leave memory while calibration and NNCF
    run and come back for graph exports and the measurement: the peak is then near the largest of
    the torch UNet, or the compiled FP32 model, or NNCF's copy, not their sum. They are in memory
    again when this returns or raises.
    """
    try:
        with PeakSampler() as peak:
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
                peak.tagging(progress),
                torch_weights,
                preset,
                cache_compiled,
                peak,
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
    preset: str,
    cache_compiled: bool,
    peak: PeakSampler,
) -> cache.CacheEntry:
    started = time.perf_counter()
    spec = optimizable(unet, recipe)
    root = Path(cache_root)
    branch = recipe.deepcache_branch
    fp32 = engine.prepare_entry(
        unet, root, checkpoint_name, checkpoint_hash, Recipe(), scaled(progress, 0.0, 0.25)
    ).entry
    # The plain FP32 IRs the recipe starts from: the FP32 entry's, or DeepCache's plain pair.
    source = fp32
    if branch is not None and (recipe.base.is_plain or not recipe.changes_graph):
        source = engine.prepare_entry(
            unet, root, checkpoint_name, checkpoint_hash, Recipe().with_deepcache(branch), progress
        ).entry

    if torch_weights is not None:
        torch_weights.release(progress)
    samples: list[Sample] = []
    if recipe.needs_calibration:
        if capture is None:
            raise ValueError(f"recipe {recipe.label()} needs calibration: no capture function given")
        runtime = CalibrationUNet(fp32, device, scaled(progress, 0.25, 0.28))
        progress(f"calibrating: sampling with the UNet at {'INT8' if runtime.int8 else 'FP32'} weights", 0.25)
        try:
            samples = spread(capture(runtime, scaled(progress, 0.28, 0.4)), recipe.samples)
        finally:
            runtime.close()
        if not samples:
            raise ValueError("calibration captured no UNet calls")

    entry = source
    if not recipe.is_plain:
        key = cache.EntryKey(checkpoint_name, checkpoint_hash, recipe)

        def build(folder: Path) -> dict[str, Any]:
            timings = build_recipe_ir(
                unet, spec, recipe, source.path, samples, folder, scaled(progress, 0.4, 0.85), torch_weights
            )
            calibration = {"samples": len(samples), "digest": digest(samples)} if samples else None
            fields = {
                "unet": spec.exported(tome=recipe.tome > 0),
                "timings": timings,
                "label": recipe.label(),
                "calibration": calibration,
            }
            if preset:
                fields["preset"] = preset
                fields["deepcache_schedule"] = PRESETS[preset].deepcache.infotext()
            if branch is not None:
                fields.update(models=ir_files(branch), feature_channels=feature_channels(folder / FULL_IR))
            return fields

        with cache.entry_lock(root, key, progress):
            entry = cache.write(root, key, build, ir_name=ir_files(branch).get("full", "unet.xml"))

    try:
        runtime_kwargs = dict(
            device=device,
            precision=recipe.precision,
            progress=scaled(progress, 0.85, 0.9),
            cache_compiled=cache_compiled,
        )
        opened = [
            engine.open_unet(entry, model=model, **runtime_kwargs)
            for model in ((None,) if branch is None else ("full", "shallow"))
        ]
        runtime, shallow = opened[0], (opened[1] if len(opened) > 1 else None)
        ahead = shapes if cache_compiled else ()  # compiled ahead only to leave blobs on disk
        for batch, height, width, tokens in ahead:  # the shallow model compiles at its first call
            runtime.prepare(batch, height, width, tokens)
        if measure is not None:
            runtime.prepare(measure.batch, measure.height // 8, measure.width // 8, measure.tokens)
        measured: dict[str, Any] = {}
        if measure is not None:
            measured = measure_entry(
                unet, runtime, spec, measure, sample_image, scaled(progress, 0.9, 1.0), torch_weights, shallow
            )
        device_name = runtime.device
        for model in opened:
            model.release()
        del runtime, shallow, opened
        peak.sample()
        report = Report(
            label=recipe.label(),
            device=device_name,
            optimize_s=time.perf_counter() - started,
            peak_rss_mib=peak.peak_mib,
            peak_phase=peak.peak_phase,
            start_rss_mib=peak.start_mib,
            disk_mib=entry.manifest.disk_bytes / 2**20,
            **measured,
        )
        entry = cache.update_report(entry, report)
    except BaseException:
        if entry not in (fp32, source):  # the recipe's entry is only kept with its report
            cache.delete(entry.path)
        raise
    progress(f"optimized: {recipe.label()}", 1.0)
    return entry


def deepcache_pairs(cache_root: str | Path, entry: cache.CacheEntry) -> list[cache.CacheEntry]:
    """The DeepCache pairs made of `entry`'s recipe for its checkpoint (deleted with it)."""
    made = entry.manifest
    return [
        pair
        for pair in cache.list_entries(Path(cache_root))
        if pair.manifest.component == "unet"
        and pair.manifest.recipe.deepcache_branch is not None
        and pair.manifest.recipe.base == made.recipe.base
        and (pair.manifest.checkpoint_name, pair.manifest.checkpoint_hash)
        == (made.checkpoint_name, made.checkpoint_hash)
    ]


def optimizable(unet: torch.nn.Module, recipe: Recipe | None = None) -> UNetSpec:
    """The UNet's spec, or UnsupportedModelError when Optimize can't make `recipe` of it: token
    merging and FFN pruning patch ldm's attention classes, not sgm's, so for SDXL they would
    change nothing; INT8 recipes and DeepCache pairs are made for both."""
    spec = describe(unet)
    if spec.adm_channels and recipe is not None and (recipe.tome > 0 or recipe.prune != "off"):
        raise UnsupportedModelError(
            "Optimize does not make token merging or FFN pruning recipes for SDXL yet (they patch the "
            "SD1/SD2 attention classes); INT8 recipes and DeepCache pairs are made for SDXL"
        )
    return spec


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
