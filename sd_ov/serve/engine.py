"""From a torch UNet to a ready OpenVINO UNet: find it in the cache or export it, then compile.

This is the one entry point the webui adapter and the command line share.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..graphs.deepcache import FULL_IR, DeepCacheConfig, DeepCacheUNet, export_deepcache
from ..graphs.export import IR_NAME, export_unet
from ..graphs.ldm_unet import describe
from ..progress import ProgressFn, scaled, silent
from ..runtime.unet import DEFAULT_SHAPE_POLICY, OVUNet
from ..store import cache
from ..store.recipe import Recipe

log = logging.getLogger("sd_ov")


def weights_hash(unet: torch.nn.Module) -> str:
    """sha256 of the UNet's weights, for models that have no checkpoint file (demo, tests)."""
    h = hashlib.sha256()
    for name, tensor in sorted(unet.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()


def file_hash(path: str | Path, chunk: int = 2**20) -> str:
    """sha256 of a checkpoint file: the webui's own checkpoint hash, computed the same way."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Prepared:
    entry: cache.CacheEntry
    exported: bool  # False when the entry came from the cache
    rebuilt_because: str | None = None


def _find(root: Path, key: cache.EntryKey) -> tuple[cache.CacheEntry | None, str | None]:
    """cache.find, where a plain entry from before the any-size trace counts as stale: it is
    re-exported once, so every picture size the webui makes runs on OpenVINO."""
    entry, problem = cache.find(root, key)
    if entry is not None and entry.manifest.unet is not None and not entry.manifest.unet.latent_multiple:
        return None, "exported by an older sd-ov that served only sides that are multiples of 64 px"
    return entry, problem


def prepare_entry(
    unet: torch.nn.Module | Callable[[], torch.nn.Module],
    cache_root: str | Path,
    checkpoint_name: str,
    checkpoint_hash: str,
    recipe: Recipe = Recipe(),
    progress: ProgressFn = silent,
    exporting: Callable[[], AbstractContextManager] = contextlib.nullcontext,
) -> Prepared:
    """The cache entry for this checkpoint and a plain recipe (FP32, or its DeepCache pair);
    exported only when absent or invalid. Compressed recipes are made by `optimize.optimize`.

    Another process exporting the same entry is waited for (its result is then used).
    `exporting()` is entered around an export only: a host whose torch weights are freed while
    OpenVINO serves reads them back for the trace, not for a cached entry. `unet` may be a function
    that makes the module to trace, called only then.
    """
    if not recipe.is_plain:
        raise ValueError(f"{recipe.label()} is made by Optimize, not exported on first use")
    root = Path(cache_root)
    root.mkdir(parents=True, exist_ok=True)
    key = cache.EntryKey(checkpoint_name, checkpoint_hash, recipe)
    entry, problem = _find(root, key)
    if entry is not None:
        progress(f"using cached OpenVINO UNet {entry.path.name}", 1.0)
        return Prepared(entry, exported=False)
    with cache.entry_lock(root, key, progress):
        cache.cleanup_stale(root)
        entry, problem = _find(root, key)  # another process may have written it meanwhile
        if entry is not None:
            progress(f"using cached OpenVINO UNet {entry.path.name}", 1.0)
            return Prepared(entry, exported=False)
        if problem:
            log.warning("sd-ov: rebuilding a cache entry: %s", problem)
            progress(f"cache entry invalid, rebuilding ({problem})", 0.0)
        with exporting():
            if not isinstance(unet, torch.nn.Module):
                unet = unet()
            spec = describe(unet).exported(tome=False)
            branch = recipe.deepcache_branch

            def build(folder: Path) -> dict[str, Any]:
                started = time.perf_counter()
                if branch is None:
                    timings = export_unet(unet, spec, folder, scaled(progress, 0.0, 0.95))
                    return {"unet": spec, "timings": timings}
                models, channels = export_deepcache(unet, spec, folder, branch, scaled(progress, 0.0, 0.95))
                timings = {"export_s": time.perf_counter() - started}
                return {"unet": spec, "timings": timings, "models": models, "feature_channels": channels}

            entry = cache.write(root, key, build, ir_name=IR_NAME if branch is None else FULL_IR)
    progress(f"exported the OpenVINO UNet to {entry.path}", 1.0)
    return Prepared(entry, exported=True, rebuilt_because=problem)


def open_unet(
    entry: cache.CacheEntry,
    device: str = "CPU",
    precision: str = "f32",
    shape_policy: str = DEFAULT_SHAPE_POLICY,
    max_compiled: int = 2,
    cache_compiled: bool = True,
    progress: ProgressFn = silent,
    model: str | None = None,
    lora: bool = False,
    control: bool = False,
) -> OVUNet:
    """Read one of the entry's IRs (its main one by default) for `device`; compiles are lazy.

    Compiled blobs go into the entry's own folder when it is writable; a read-only cache still
    serves, compiling at each start.
    """
    blob_dir = entry.blob_dir if cache_compiled and os.access(entry.path, os.W_OK) else None
    return OVUNet(
        entry.ir_path(model),
        device=device,
        precision=precision,
        shape_policy=shape_policy,
        max_compiled=max_compiled,
        latent_multiple=entry.manifest.unet.size_multiple,
        blob_dir=blob_dir,
        progress=progress,
        lora=lora,
        control=control,
    )


def open_deepcache(entry: cache.CacheEntry, config: DeepCacheConfig, **runtime: Any) -> DeepCacheUNet:
    """The full and shallow models of a DeepCache entry, called by `config`'s schedule.

    `runtime` takes open_unet's keywords (device, precision, shape_policy, ...).
    """
    full, shallow = (open_unet(entry, model=name, **runtime) for name in ("full", "shallow"))
    return DeepCacheUNet(full, shallow, config, branch=entry.manifest.recipe.deepcache_branch)
