"""How long the fastest preset's Optimize takes on this machine, from what was measured here.

The preset's recipes already in the cache carry their Optimize seconds (the recipe's, its
DeepCache pair's and its INT8 VAE decoder's reports: 95 % of the whole run, the rest its sample
pictures); per weight, the run of the nearest size scales to another checkpoint. Before any
preset ran here, the FP32 exports in the cache tell this machine's speed: the preset's whole
Optimize took 47x the FP32 export's seconds in A1111 (SD1.5, 2 cores: 696 s against 14.9 s;
recipe 344 s, pair 275 s, INT8 VAE 44 s), 42x without the INT8 VAE (Forge makes none): 45x, the
ratio of the same machine's work, so it carries to a faster or slower one.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

from ..store.cache import CacheEntry

PRESET_OVER_FP32_EXPORT = 45.0


def preset_seconds(entries: Iterable[CacheEntry], parameters: int, preset: str = "fastest") -> float | None:
    """Seconds the preset's Optimize should take here for a UNet of `parameters` weights; None
    where nothing was measured here yet."""
    entries = list(entries)
    vae_seconds = {  # the INT8 VAE decoder a preset run made
        e.manifest.checkpoint_hash: float(getattr(e.manifest.report, "optimize_s", None) or 0.0)
        for e in entries
        if e.manifest.component == "vae" and e.manifest.recipe.int8 == "full"
    }
    entries = [e for e in entries if e.manifest.component == "unet" and e.manifest.unet is not None]
    runs: dict[tuple[str, str], float] = {}
    for e in entries:
        report = e.manifest.report
        if e.manifest.preset == preset and report is not None and report.optimize_s:
            key = (e.manifest.checkpoint_name, e.manifest.checkpoint_hash)
            runs[key] = runs.get(key, vae_seconds.get(key[1], 0.0)) + float(report.optimize_s)
    weights = {
        (e.manifest.checkpoint_name, e.manifest.checkpoint_hash): e.manifest.unet.parameters for e in entries
    }
    if runs:  # the run of the nearest size: an SDXL run is not SD1.5's seconds per weight
        nearest = min(runs, key=lambda k: abs(math.log(weights[k] / parameters)))
        return runs[nearest] / weights[nearest] * parameters
    exports = [
        (e.manifest.timings.get("convert_s", 0.0) + e.manifest.timings.get("save_s", 0.0))
        / e.manifest.unet.parameters
        for e in entries
        if e.manifest.recipe.is_plain and e.manifest.timings.get("convert_s")
    ]
    return statistics.median(exports) * parameters * PRESET_OVER_FP32_EXPORT if exports else None
