"""How the served UNet is compiled (device, precision, shapes, LoRA branch), resolved for a
recipe and a device, and the one-line summary of what runs that the infotext and the accordion
show. A change of these settings between jobs recompiles the served UNet (served.py)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..graphs.deepcache import DeepCacheConfig
from ..store.recipe import Recipe
from .cpu_caps import cpu_caps
from .ov_core import default_precision, device_kind, needs_static_shapes
from .unet import DEFAULT_SHAPE_POLICY, PRECISIONS, SHAPE_POLICIES


@dataclass(frozen=True)
class RuntimeSettings:
    """How the served UNet is compiled; a change between jobs recompiles."""

    device: str = "CPU"
    precision: str = "f32"
    shape_policy: str = DEFAULT_SHAPE_POLICY
    max_compiled: int = 2
    cache_compiled: bool = True
    # LoRA allowed: the branch beside every Linear/1x1 conv (lora_branch.py) is added at the first
    # LoRA; off, the graph stays the IR's and a LoRA is refused.
    lora: bool = False
    # Why the precision that runs is not the one asked for (bf16 on a CPU that runs it slower).
    precision_note: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        if self.shape_policy not in SHAPE_POLICIES:
            raise ValueError(f"shapes must be one of {SHAPE_POLICIES}, not {self.shape_policy!r}")

    def for_recipe(self, recipe: Recipe) -> RuntimeSettings:
        """A recipe made for a precision runs at it; the plain recipe follows the setting. Then
        the device's defaults: "auto" precision becomes the device's (`ov_core.DEFAULT_PRECISION`),
        and a device that takes static shapes only (NPU) gets them."""
        settings = self if recipe.precision == "f32" else replace(self, precision=recipe.precision)
        return settings.for_device()

    def for_device(self) -> RuntimeSettings:
        precision = default_precision(self.device) if self.precision == "auto" else self.precision
        shapes = "static" if needs_static_shapes(self.device) else self.shape_policy
        note = ""
        if precision == "bf16" and device_kind(self.device) == "CPU":
            caps = cpu_caps()
            if not caps.bf16_native:  # measured slower than f32 here (and NaN on an AMX VM): f32 runs
                precision = "f32"
                speed = f" (bf16 ran {caps.bf16_speedup:.2f}x f32's speed)" if caps.bf16_speedup else ""
                note = f"bf16 asked, f32 ran: this CPU does not run bf16 faster than f32{speed}"
        return replace(self, precision=precision, shape_policy=shapes, precision_note=note)

    def open_kwargs(self) -> dict:
        """`engine.open_unet`'s runtime keywords."""
        return {
            "device": self.device,
            "precision": self.precision,
            "shape_policy": self.shape_policy,
            "max_compiled": self.max_compiled,
            "cache_compiled": self.cache_compiled,
        }


def run_summary(
    recipe: Recipe, settings: RuntimeSettings, deepcache: DeepCacheConfig = DeepCacheConfig()
) -> str:
    """What runs, as the infotext and the accordion's status say it: recipe (+DeepCache), device,
    precision, shapes."""
    name = recipe.name() + (f"+{deepcache.label()}" if deepcache.enabled else "")
    return f"{name}, {settings.device}, {settings.precision}, {settings.shape_policy}"
