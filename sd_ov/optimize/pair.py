"""A recipe and its DeepCache pair from one Optimize: one calibration capture for both, and the
plain FP32 entries exported only to start from deleted afterwards (for SDXL each is 10 GB beside a
2.6 GB INT8 recipe)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import ExportError
from ..graphs.ldm_unet import Sample
from ..progress import ProgressFn, scaled, silent
from ..store import cache
from ..store.recipe import Recipe
from .run import CaptureFn, optimize
from .sampling import UNetFn


def optimize_with_deepcache(
    unet: torch.nn.Module,
    cache_root: str | Path,
    checkpoint_name: str,
    checkpoint_hash: str,
    recipe: Recipe,
    capture: CaptureFn | None = None,
    *,
    deepcache_branch: int | None = None,
    progress: ProgressFn = silent,
    keep_fp32: bool = True,
    pair_failed: Callable[[ExportError], None] | None = None,
    **kwargs: Any,
) -> list[cache.CacheEntry]:
    """`optimize` the recipe; with `deepcache_branch`, then its DeepCache pair too (the recipe
    applied to the full and the shallow model), calibrated on the same samples, captured once.
    Returns the entries made: the recipe's, then the pair's. `kwargs` are optimize's.

    `keep_fp32` False: the plain FP32 entries this run exported only to start from (the FP32 IR,
    and the plain DeepCache pair an INT8 pair is compressed from) are deleted at the end; ones
    that were in the cache before (the user served FP32) stay. For SDXL each is 10 GB beside a
    2.6 GB INT8 recipe; the cost is a new export (minutes) should FP32 be wanted later.

    `pair_failed(error)`, when given, is told why the pair could not be exported or saved (a full
    disk) instead of the error ending the run: the recipe made before it stays and is returned."""
    root = Path(cache_root)
    plain = [Recipe()] + ([Recipe().with_deepcache(deepcache_branch)] if deepcache_branch is not None else [])
    existed = {
        r: cache.find(root, cache.EntryKey(checkpoint_name, checkpoint_hash, r))[0] is not None for r in plain
    }
    entries = _optimize_with_deepcache(
        unet,
        root,
        checkpoint_name,
        checkpoint_hash,
        recipe,
        capture,
        deepcache_branch,
        progress,
        pair_failed,
        **kwargs,
    )
    made = {e.path for e in entries}
    for each in plain if not keep_fp32 else ():
        entry = cache.find(root, cache.EntryKey(checkpoint_name, checkpoint_hash, each))[0]
        if entry is not None and not existed[each] and entry.path not in made:
            left = cache.delete(entry.path)
            progress(
                f"deleted the {'FP32 DeepCache pair' if each.deepcache_branch is not None else 'FP32'} "
                "entry exported only for Optimize"
                + (f" ({len(left)} files in use go later)" if left else ""),
                1.0,
            )
    return entries


def _optimize_with_deepcache(
    unet: torch.nn.Module,
    cache_root: Path,
    checkpoint_name: str,
    checkpoint_hash: str,
    recipe: Recipe,
    capture: CaptureFn | None,
    deepcache_branch: int | None,
    progress: ProgressFn,
    pair_failed: Callable[[ExportError], None] | None,
    **kwargs: Any,
) -> list[cache.CacheEntry]:
    captured: list[list[Sample]] = []

    def capture_once(runtime: UNetFn, progress_: ProgressFn) -> list[Sample]:
        if not captured:
            captured.append(capture(runtime, progress_))
        return captured[0]

    sample_image = kwargs.pop("sample_image", None)  # the recipe's picture; its pair's full model is the same
    recipes = [recipe.base] + (
        [recipe.with_deepcache(deepcache_branch)] if deepcache_branch is not None else []
    )
    entries = []
    for i, each in enumerate(recipes):
        share = scaled(progress, i / len(recipes), (i + 1) / len(recipes))
        try:
            entries.append(
                optimize(
                    unet,
                    cache_root,
                    checkpoint_name,
                    checkpoint_hash,
                    each,
                    capture_once if capture is not None else None,
                    progress=share,
                    sample_image=sample_image if i == 0 else None,
                    **kwargs,
                )
            )
        except ExportError as err:
            if i == 0 or pair_failed is None:
                raise
            progress(f"no DeepCache pair: {err}", 1.0)
            pair_failed(err)
    return entries
