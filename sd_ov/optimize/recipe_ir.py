"""A recipe's IRs, written from the torch UNet and the plain FP32 IRs: one model, or DeepCache's
full and shallow pair, with the recipe's graph changes (token merging, pruning), INT8 and
16-bit storage.

DeepCache on a compressed recipe is the recipe applied to each of DeepCache's two graphs: ToMe
and pruning are patched into the torch modules that both traces run through, and INT8 compresses
each IR from the same calibration samples. The shallow model reads the full model's cached
feature, so its samples carry the feature computed by the very graph NNCF collected the full
model's statistics on (hybrid: its INT8-weight stage): the layers both models share get the same
quantizer ranges, and with a fresh cache the shallow model's output is the full model's.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..constants import DEEPCACHE_FEATURE
from ..graphs.deepcache import FULL_IR, SHALLOW_IR, export_deepcache
from ..graphs.export import IR_NAME, example_inputs, export_unet, save_ir
from ..graphs.ldm_unet import Sample
from ..graphs.prune import ffn_activity, magnitude_pruned_copy, neurons_to_keep, pruned_ffn
from ..graphs.tome import token_merging
from ..progress import ProgressFn, scaled, silent
from ..runtime.compress import compress_ir
from ..runtime.ov_core import get_core
from ..runtime.torch_weights import ModuleWeights
from ..store import fs
from ..store.recipe import Recipe
from ..store.unet_spec import UNetSpec


def ir_files(branch: int | None) -> dict[str, str]:
    """The IR file of each model a recipe has: one UNet, or DeepCache's pair."""
    return {"unet": IR_NAME} if branch is None else {"full": FULL_IR, "shallow": SHALLOW_IR}


@contextlib.contextmanager
def torch_weights_in(weights: ModuleWeights | None, progress: ProgressFn = silent):
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


def export_graph(
    unet: torch.nn.Module,
    spec: UNetSpec,
    recipe: Recipe,
    samples: Sequence[Sample],
    folder: Path,
    progress: ProgressFn,
) -> dict[str, float]:
    """Export the UNet (or its DeepCache pair) with the recipe's graph changes into `folder`."""
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
        if recipe.deepcache_branch is None:
            timings.update(export_unet(model, spec, folder, scaled(progress, 0.2, 1.0)))
        else:
            started = time.perf_counter()
            export_deepcache(model, spec, folder, recipe.deepcache_branch, scaled(progress, 0.2, 1.0))
            timings["export_s"] = time.perf_counter() - started
    del model
    gc.collect()
    return timings


def with_features(full_ir: Path, samples: Sequence[Sample]) -> list[Sample]:
    """The shallow model's calibration samples: each with the feature the full model gives it."""
    compiled = get_core().compile_model(str(full_ir), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    out = []
    for sample in samples:
        result = request.infer(sample)
        out.append({**sample, DEEPCACHE_FEATURE: np.array(result[compiled.output(DEEPCACHE_FEATURE)])})
    del request, compiled
    gc.collect()
    return out


def feature_channels(full_ir: Path) -> int:
    return int(
        get_core().read_model(str(full_ir)).output(DEEPCACHE_FEATURE).get_partial_shape()[1].get_length()
    )


def build_recipe_ir(
    unet: torch.nn.Module,
    spec: UNetSpec,
    recipe: Recipe,
    fp32_dir: Path,
    samples: Sequence[Sample],
    folder: Path,
    progress: ProgressFn = silent,
    torch_weights: ModuleWeights | None = None,
) -> dict[str, float]:
    """Write the recipe's IRs (`ir_files`) into `folder`; returns the timings of each stage.

    `fp32_dir` holds the plain FP32 IRs of the same models (the FP32 entry, or the plain DeepCache
    entry of the recipe's branch). Without graph changes INT8 compresses those as they are; with
    them the modified UNet is exported first (into a subfolder, removed afterwards).
    """
    files = ir_files(recipe.deepcache_branch)
    timings: dict[str, float] = {}
    source = fp32_dir
    if recipe.changes_graph:
        source = folder if recipe.int8 == "off" else folder / "graph"
        source.mkdir(exist_ok=True)
        with torch_weights_in(torch_weights, progress):
            timings.update(export_graph(unet, spec, recipe, samples, source, scaled(progress, 0.0, 0.4)))
    if recipe.int8 != "off":
        started = time.perf_counter()
        shallow_samples: list[Sample] = []

        def features_from(full_graph: Path) -> None:
            progress("the shallow model's calibration: features from the full model", 0.6)
            shallow_samples.extend(with_features(full_graph, samples))

        for i, (model, name) in enumerate(files.items()):
            label = f" the {model} model" if len(files) > 1 else ""
            progress(f"compressing{label} to INT8 ({recipe.int8}, {len(samples)} samples)", 0.4 + 0.3 * i)
            compress_ir(
                source / name,
                folder / name,
                recipe.int8,
                shallow_samples if model == "shallow" else samples,
                recipe.smooth_quant,
                calibrated_on=features_from if model == "full" and samples else None,
            )
        timings["compress_s"] = time.perf_counter() - started
    elif not recipe.changes_graph:  # a precision of its own only: the FP32 IRs, 16-bit on disk
        for name in files.values():
            save_ir(get_core().read_model(str(source / name)), folder / name, fp16=True)
    if source not in (folder, fp32_dir):
        gc.collect()  # read IRs map their .bin: released before the folder goes (Windows)
        fs.remove_tree(source)
    progress("IR written", 1.0)
    return timings
