"""What an optimized UNet is made of: INT8 mode, token merging, pruning, inference precision.

A recipe is part of its cache entry's key (two recipes, two entries) and names its "SD Unet"
option, e.g. `[OpenVINO INT8 ToMe0.5] <checkpoint>`. The calibration samples are not part of
the key: optimizing the same recipe again replaces the entry rather than adding a second one
with the same label; the manifest records which samples were used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from .compress import INT8_MODES
from .runtime import PRECISIONS
from .tome import MAX_RATIO

PRUNE_MODES = ("off", "magnitude", "ffn")
MAX_PRUNE_RATIO = 0.9
DEFAULT_SAMPLES = 16
# What the label shows for each INT8 mode; "INT8" is the default (hybrid) recipe.
INT8_LABELS = {"weights": "INT8w", "hybrid": "INT8", "full": "INT8full"}
PRUNE_LABELS = {"magnitude": "Mag", "ffn": "FFN"}


@dataclass(frozen=True)
class Recipe:
    int8: str = "off"
    tome: float = 0.0  # token merging ratio, 0 (off) to 0.75
    prune: str = "off"
    prune_ratio: float = 0.0  # of the weights (magnitude) or of each FFN's neurons (ffn)
    precision: str = "f32"  # OpenVINO inference precision hint
    smooth_quant: bool = False
    samples: int = DEFAULT_SAMPLES  # calibration samples; not part of the cache key

    def __post_init__(self) -> None:
        if self.int8 not in INT8_MODES:
            raise ValueError(f"INT8 mode must be one of {INT8_MODES}, not {self.int8!r}")
        if not 0.0 <= self.tome <= MAX_RATIO:
            raise ValueError(f"the token merging ratio must be between 0 and {MAX_RATIO}, not {self.tome}")
        if self.prune not in PRUNE_MODES:
            raise ValueError(f"pruning must be one of {PRUNE_MODES}, not {self.prune!r}")
        if self.prune != "off" and not 0.0 < self.prune_ratio <= MAX_PRUNE_RATIO:
            raise ValueError(f"the pruning ratio must be in (0, {MAX_PRUNE_RATIO}], not {self.prune_ratio}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        if self.needs_calibration and self.samples < 1:
            raise ValueError("a calibrated recipe needs at least one calibration sample")

    @property
    def needs_calibration(self) -> bool:
        return self.int8 in ("hybrid", "full") or self.prune == "ffn"

    @property
    def changes_graph(self) -> bool:
        """True when the IR differs from the plain export (the FP32 IR cannot be reused)."""
        return self.tome > 0 or self.prune != "off"

    @property
    def is_plain(self) -> bool:
        return self.int8 == "off" and not self.changes_graph and self.precision == "f32"

    def parts(self) -> list[str]:
        parts = []
        if self.precision != "f32":
            parts.append(self.precision.upper())
        if self.int8 != "off":
            parts.append(INT8_LABELS[self.int8] + ("+SQ" if self.smooth_quant else ""))
        if self.tome > 0:
            parts.append(f"ToMe{self.tome:g}")
        if self.prune != "off":
            parts.append(f"{PRUNE_LABELS[self.prune]}{round(self.prune_ratio * 100)}%")
        return parts

    def label(self) -> str:
        """What the SD Unet option shows between the brackets after "OpenVINO"."""
        return " ".join(self.parts()) or "FP32"

    def name(self) -> str:
        """The cache folder's name (a readable prefix; the key's hash keeps it unique)."""
        return "-".join(p.lower().replace("%", "").replace("+", "") for p in self.parts()) or "fp32"

    def key(self) -> dict[str, Any]:
        """The cache key's recipe; the plain recipe's key is the one the plain option uses."""
        if self.is_plain:
            return {"name": "fp32", "weights": "fp32"}
        key = {k: v for k, v in asdict(self).items() if k != "samples"}
        return {"name": self.name(), "weights": "int8" if self.int8 != "off" else "fp32", **key}

    @classmethod
    def from_key(cls, key: dict[str, Any]) -> Recipe:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in key.items() if k in known})
