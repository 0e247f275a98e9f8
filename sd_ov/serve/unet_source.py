"""Where a served UNet's IRs come from: a checkpoint's cache entries, the plain ones exported
from its torch UNet at first use, the optimized ones made by Optimize (or a clear error saying
how to make them)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import SdOvError
from ..progress import ProgressFn
from ..store import cache
from ..store.recipe import Recipe
from . import engine


@dataclass(frozen=True)
class UNetSource:
    """Where the IRs come from: a checkpoint's cache entries, exported from its torch UNet on first
    use (plain and DeepCache). `torch_calls` is entered around an export, so the host routes the
    trace's UNet calls to torch itself. `exported`: where a host's own UNet is not the ldm/sgm
    class the exporter traces (Forge's), what makes that class's UNet of the same weights, called
    only when an export runs."""

    cache_root: Path
    checkpoint_name: str
    checkpoint_hash: str
    unet: torch.nn.Module
    torch_calls: Callable[[], AbstractContextManager] = contextlib.nullcontext
    exported: Callable[[], torch.nn.Module] | None = None

    def entry(self, recipe: Recipe, progress: ProgressFn) -> cache.CacheEntry:
        """The entry of `recipe`: plain ones are exported when missing, optimized ones must exist."""
        if recipe.is_plain:
            return engine.prepare_entry(
                self.exported or self.unet,
                self.cache_root,
                self.checkpoint_name,
                self.checkpoint_hash,
                recipe,
                progress,
                exporting=self.torch_calls,
            ).entry
        found, problem = cache.find(
            Path(self.cache_root), cache.EntryKey(self.checkpoint_name, self.checkpoint_hash, recipe)
        )
        if found is None:
            why = problem or "deleted or never made"
            if recipe.deepcache_branch is not None:  # what to do first: infotext notes are short
                raise SdOvError(
                    f"no DeepCache pair (branch {recipe.deepcache_branch}) of {recipe.label()}: Optimize it "
                    f"with 'DeepCache pair too' = {recipe.deepcache_branch} ({why})"
                )
            raise SdOvError(
                f"{recipe.label()} of {self.checkpoint_name} is not in the cache "
                f"({why}): make it with Optimize in the OpenVINO tab"
            )
        return found
