"""The "fastest" preset: the combination of recipe, precision and DeepCache schedule that made the
fastest picture within the fidelity floor (25 dB against torch's picture, the original report's
bar) in a real webui (`tests/real/test_webui_real.py -k five_times`, README, "How much faster").

Measured on 2 cores, SD1.5 at 512², 20 Euler steps, the whole API request (AMD EPYC Zen 4,
2026-12-03, seeded random weights): INT8 hybrid-ff (hybrid with the feed-forward MatMuls W8A8
too) + ToMe 0.5 with its DeepCache pair at interval 4, non-uniform (5 full calls of 20), and the
INT8 VAE: 22.7 s against torch's 345.4 s (15.2x) at 34.4 dB; the same recipe at interval 3
27.4 s at 35.1 dB, INT8 hybrid at interval 3 (the preset before) 31.1 s at 35.2 dB. Random
weights cannot show what static activation scales (hybrid-ff) or fewer full calls (interval 4)
do to a real checkpoint's picture: Optimize's report gives the PSNR against torch on the user's
checkpoint, and interval 3 in the accordion brings the closer pictures back. bf16 for the float
parts only where this CPU runs bf16 faster than f32 (`cpu_caps`; 1.95x on that Zen 4): a claim
of BF16 is not enough (3x slower on an AMX VM).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..graphs.deepcache import DeepCacheConfig
from ..runtime.ov_core import default_precision, device_kind
from ..store.recipe import Recipe


@dataclass(frozen=True)
class Preset:
    name: str
    recipe: Recipe
    deepcache: DeepCacheConfig
    # SDXL's UNet (sgm) takes no token merging or FFN pruning (they patch ldm's attention): its
    # recipe keeps the rest (bench/sdxl.py measures it at 1024²)
    sdxl_recipe: Recipe | None = None
    # an INT8 VAE decoder too (`vae_int8`): SD's decoder at 512² in 4.0 s against bf16's 6.4 s
    vae_int8: bool = False

    def recipe_for(self, device: str = "CPU", sdxl: bool = False) -> Recipe:
        """The recipe (SDXL's for an SDXL UNet) with the precision `device` runs fastest
        (`preset_precision`)."""
        recipe = self.sdxl_recipe if sdxl and self.sdxl_recipe is not None else self.recipe
        return replace(recipe, precision=preset_precision(device))

    def describe(self, device: str = "CPU", sdxl: bool = False) -> str:
        """What it runs, for reports."""
        return f"{self.recipe_for(device, sdxl).label()} + {self.deepcache.label()}"

    def form_values(self, device: str = "CPU", sdxl: bool = False) -> dict:
        """The Optimize form's fields that make the preset's recipe and its DeepCache pair."""
        recipe = self.recipe_for(device, sdxl)
        return {
            "int8": recipe.int8,
            "tome": recipe.tome,
            "prune": recipe.prune,
            "smooth_quant": recipe.smooth_quant,
            "precision": recipe.precision,
            "deepcache_branch": str(self.deepcache.branch),
            "vae_int8": self.vae_int8,
        }


FASTEST = Preset(
    "fastest",
    Recipe(int8="hybrid-ff", tome=0.5),
    DeepCacheConfig(4, 0, "non-uniform"),
    # SDXL keeps hybrid: hybrid-ff is measured on SD1.5 only
    Recipe(int8="hybrid"),
    vae_int8=True,
)
PRESETS = {p.name: p for p in (FASTEST,)}


def recipe_schedule(manifest) -> DeepCacheConfig:
    """The DeepCache schedule a recipe runs best with: its manifest's `deepcache_schedule` (a
    preset's recipe: the preset's), an older manifest's preset's, off for any other recipe."""
    text = getattr(manifest, "deepcache_schedule", "") if manifest is not None else ""
    preset = PRESETS.get(getattr(manifest, "preset", "")) if manifest is not None else None
    if not text and preset is not None:
        text = preset.deepcache.infotext()
    return DeepCacheConfig.from_infotext(text) if text else DeepCacheConfig()


def preset_precision(device: str = "CPU") -> str:
    """The preset's inference precision on `device`: bf16 on a CPU that runs it faster than f32,
    f32 on other CPUs, the device's own default elsewhere."""
    if device_kind(device) != "CPU":
        return default_precision(device)
    from ..runtime.cpu_caps import cpu_caps

    return "bf16" if cpu_caps().bf16_native else "f32"
