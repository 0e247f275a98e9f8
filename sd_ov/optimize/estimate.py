"""How long the fastest preset's Optimize takes on this machine, from what was measured here.

The preset's recipes already in the cache carry their Optimize seconds (the recipe's and its
DeepCache pair's reports); per weight, they scale to another checkpoint. Before any preset ran
here, the FP32 exports in the cache tell this machine's speed: the preset's Optimize took 25x the
FP32 export's seconds (SD1.5, 2 cores: 394 s against 15.7 s; the ratio of the same machine's
work, so it carries to a faster or slower one).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from ..store.cache import CacheEntry

PRESET_OVER_FP32_EXPORT = 25.0


def preset_seconds(entries: Iterable[CacheEntry], parameters: int, preset: str = "fastest") -> float | None:
    """Seconds the preset's Optimize should take here for a UNet of `parameters` weights; None
    where nothing was measured here yet."""
    entries = [e for e in entries if e.manifest.component == "unet" and e.manifest.unet is not None]
    runs: dict[tuple[str, str], float] = {}
    for e in entries:
        report = e.manifest.report
        if e.manifest.preset == preset and report is not None and report.optimize_s:
            key = (e.manifest.checkpoint_name, e.manifest.checkpoint_hash)
            runs[key] = runs.get(key, 0.0) + float(report.optimize_s)  # the recipe and its pair
    weights = {
        (e.manifest.checkpoint_name, e.manifest.checkpoint_hash): e.manifest.unet.parameters for e in entries
    }
    if runs:
        return statistics.median(s / weights[k] for k, s in runs.items()) * parameters
    exports = [
        (e.manifest.timings.get("convert_s", 0.0) + e.manifest.timings.get("save_s", 0.0))
        / e.manifest.unet.parameters
        for e in entries
        if e.manifest.recipe.is_plain and e.manifest.timings.get("convert_s")
    ]
    return statistics.median(exports) * parameters * PRESET_OVER_FP32_EXPORT if exports else None
