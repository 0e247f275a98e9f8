"""A recipe and its DeepCache pair from one Optimize: one calibration capture for both, the room
for the whole run asked before it starts, and the plain FP32 entries exported only to start from
deleted as soon as nothing needs them (for SDXL each is 10 GB beside a 2.6 GB INT8 recipe)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import ExportError
from ..graphs.deepcache import shallow_parameters
from ..graphs.export import check_disk_space
from ..graphs.ldm_unet import Sample, describe
from ..progress import ProgressFn, scaled, silent
from ..runtime.compress import INT8_IR_OVERHEAD
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
    if recipe.int8 != "off":  # the whole run's room, asked before any work
        check_room(root, unet, deepcache_branch, fp32_there=existed[plain[0]], pair_there=existed[plain[-1]])
    made: set[Path] = set()

    def drop_fp32(only: list[Recipe]) -> None:
        """The plain FP32 entries this run exported only to start from go (as soon as nothing
        needs them: the FP32 IR once the recipe is made, before the pair takes its room)."""
        for each in only if not keep_fp32 else ():
            entry = cache.find(root, cache.EntryKey(checkpoint_name, checkpoint_hash, each))[0]
            if entry is not None and not existed[each] and entry.path not in made:
                left = cache.delete(entry.path)
                progress(
                    f"deleted the {'FP32 DeepCache pair' if each.deepcache_branch is not None else 'FP32'} "
                    "entry exported only for Optimize"
                    + (f" ({len(left)} files in use go later)" if left else ""),
                    1.0,
                )

    def recipe_made(entry: cache.CacheEntry) -> None:
        made.add(entry.path)
        drop_fp32(plain[:1])

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
        recipe_made,
        **kwargs,
    )
    made |= {e.path for e in entries}
    drop_fp32(plain)
    return entries


def check_room(
    root: Path, unet: torch.nn.Module, branch: int | None, fp32_there: bool, pair_there: bool
) -> None:
    """Refuse, before minutes of work, a run whose files will not fit: the FP32 IR it starts from
    (4 bytes a weight), the INT8 recipe (hybrid writes a stage and the target), then, with the FP32
    IR gone, the FP32 DeepCache pair and its INT8 stage and target. At its peak, as the run makes
    and deletes them (`int8_weight_bytes`: one byte a weight and what NNCF keeps float)."""
    weights = describe(unet).parameters
    shallow = shallow_parameters(unet, branch) if branch is not None else 0
    recipe_phase = (0 if fp32_there else 4 * weights) + 2 * int8_weight_bytes(weights)
    pair_phase = 0
    if branch is not None:
        pair_phase = int8_weight_bytes(weights) + (0 if pair_there else 4 * (weights + shallow))
        pair_phase += 2 * int8_weight_bytes(weights + shallow)
    needed = max(recipe_phase, pair_phase)
    what = "the INT8 recipe" + (" and its DeepCache pair" if branch is not None else "")
    check_disk_space(root, needed, what=f"{what} (at the run's peak)")


def int8_weight_bytes(weights: int) -> int:
    """An INT8 IR of this many weights: one byte each and what NNCF keeps float (`int8_ir_bytes`)."""
    return int(weights * INT8_IR_OVERHEAD)


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
    recipe_made: Callable[[cache.CacheEntry], None],
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
        if i == 0:
            recipe_made(entries[0])
    return entries
