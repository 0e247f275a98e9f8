"""A cache entry of a torch module keyed by its weights (the control model, the TAESD decoder):
what a host hands over as a model object, without a file or hash to name it.

Why its own module: each such part hashed its weights and wrapped `cache.find_or_write` in its
own words; one helper keeps the key the same for every part.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable
from pathlib import Path

import torch

from ..progress import ProgressFn, silent
from . import cache
from .recipe import Recipe

_digests: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()


def weights_digest(model: torch.nn.Module) -> str:
    """A digest of every tensor of `model` (names, shapes, bytes), once per model object: the
    cache key of its export. Hashing 1.4 GB of a SD1.5 control model takes ~1 s, once per load."""
    known = _digests.get(model)
    if known is not None:
        return known
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(data.shape)}:{data.dtype}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    _digests[model] = known = digest.hexdigest()[:16]
    return known


def prepare_module_entry(
    model: torch.nn.Module,
    cache_root: str | Path,
    name: str,
    component: str,
    export: Callable[[Path], dict],
    ir_name: str,
    what: str,
    progress: ProgressFn = silent,
    recipe: Recipe = Recipe(),
) -> cache.CacheEntry:
    """The entry of `model` (named `name`, keyed by its weights and `recipe`: FP32, or INT8
    weights), written by `export(folder)` when absent or damaged."""
    key = cache.EntryKey(name, weights_digest(model), recipe, component=component)
    return cache.find_or_write(Path(cache_root), key, export, ir_name, what, progress)
