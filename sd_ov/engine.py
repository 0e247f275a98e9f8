"""From a torch UNet to a ready OpenVINO UNet: find it in the cache or export it, then compile.

This is the one entry point the webui adapter and the command line share.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import cache
from .deepcache import FULL_IR, DeepCacheConfig, DeepCacheUNet, export_deepcache
from .export import IR_NAME, export_unet
from .ldm_unet import describe
from .progress import ProgressFn, scaled, silent
from .runtime import DEFAULT_SHAPE_POLICY, OVUNet

log = logging.getLogger("sd_ov")

FP32_RECIPE: dict[str, Any] = {"name": "fp32", "weights": "fp32"}


def deepcache_recipe(branch: int, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The IR recipe of DeepCache at `branch`: a full and a shallow model.

    Interval and schedule are run-time choices (label, infotext, per-job setting): changing
    them never re-exports, so they are not part of the IR's cache key.
    """
    base = dict(base or FP32_RECIPE)
    return {**base, "name": f"{base['name']}-deepcache-b{branch}", "deepcache_branch": int(branch)}


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


def prepare_entry(
    unet: torch.nn.Module,
    cache_root: str | Path,
    checkpoint_name: str,
    checkpoint_hash: str,
    recipe: dict[str, Any] | None = None,
    progress: ProgressFn = silent,
) -> Prepared:
    """The cache entry for this checkpoint and recipe (plain FP32 or DeepCache); exported only when
    absent or invalid. Compressed recipes are made by `optimize.optimize`.
    """
    root = Path(cache_root)
    root.mkdir(parents=True, exist_ok=True)
    cache.cleanup_stale(root)
    key = cache.EntryKey(checkpoint_name, checkpoint_hash, dict(recipe or FP32_RECIPE))
    entry, problem = cache.find(root, key)
    if entry is not None:
        progress(f"using cached OpenVINO UNet {entry.path.name}", 1.0)
        return Prepared(entry, exported=False)
    if problem:
        log.warning("sd-ov: rebuilding a cache entry: %s", problem)
        progress(f"cache entry invalid, rebuilding ({problem})", 0.0)
    spec = describe(unet)

    branch = key.recipe.get("deepcache_branch")

    def build(folder: Path) -> dict[str, Any]:
        started = time.perf_counter()
        if branch is not None:
            extra = export_deepcache(unet, spec, folder, int(branch), scaled(progress, 0.0, 0.95))
            extra["timings"] = {"export_s": time.perf_counter() - started}
        else:
            extra = {"timings": export_unet(unet, spec, folder, scaled(progress, 0.0, 0.95))}
        return {"unet": spec.to_dict(), "inputs": ["x", "timesteps", "context"], **extra}

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
    ir: str | None = None,
) -> OVUNet:
    """Read one of the entry's IRs (its main one by default) for `device`; compiles are lazy."""
    return OVUNet(
        entry.path / ir if ir else entry.xml_path,
        device=device,
        precision=precision,
        shape_policy=shape_policy,
        max_compiled=max_compiled,
        downsample=entry.manifest["unet"]["downsample"],
        blob_dir=entry.blob_dir if cache_compiled else None,
        progress=progress,
    )


def open_deepcache(entry: cache.CacheEntry, config: DeepCacheConfig, **runtime: Any) -> DeepCacheUNet:
    """The full and shallow models of a DeepCache entry, called by `config`'s schedule.

    `runtime` takes open_unet's keywords (device, precision, shape_policy, ...).
    """
    models = entry.manifest["models"]
    full, shallow = (open_unet(entry, ir=models[name], **runtime) for name in ("full", "shallow"))
    return DeepCacheUNet(full, shallow, config, branch=entry.manifest["deepcache"]["branch"])
