"""What an optimized UNet is made of: INT8 mode, token merging, pruning, inference precision, and
whether it is DeepCache's pair of models.

A recipe is its cache entry's key (two recipes, two entries) and names its "SD Unet" option, e.g.
`[OpenVINO INT8 ToMe0.5] <checkpoint>`. It is canonical: fields that change nothing are
normalised when the recipe is made (a pruning ratio with pruning off, SmoothQuant where no
MatMul is quantized, float noise in a slider's ratio), so the same recipe made from the tab, the
API or the command line is one entry with one label.

The calibration sample count is not part of the key: optimizing the same recipe again replaces
the entry rather than adding a second one with the same label; the manifest records which
samples were used. DeepCache's interval and schedule are run-time choices and not part of it
either; its skip branch is, because it decides which two graphs are exported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..constants import INT8_MODES, PRECISIONS, PRUNE_MODES
from ..constants import MAX_TOME_RATIO as MAX_RATIO

MAX_PRUNE_RATIO = 0.9
DEFAULT_SAMPLES = 16
# What the label shows for each INT8 mode; "INT8" is the default (hybrid) recipe.
INT8_LABELS = {"weights": "INT8w", "hybrid": "INT8", "hybrid-ff": "INT8ff", "full": "INT8full"}
# The modes NNCF quantizes activations in, from calibration samples.
CALIBRATED_INT8 = ("hybrid", "hybrid-ff", "full")
PRUNE_LABELS = {"magnitude": "Mag", "ffn": "FFN"}
# The plain recipe's key, unchanged since the first release: existing cache entries stay valid.
PLAIN_KEY: dict[str, Any] = {"name": "fp32", "weights": "fp32"}


@dataclass(frozen=True)
class Recipe:
    int8: str = "off"
    tome: float = 0.0  # token merging ratio, 0 (off) to 0.75
    prune: str = "off"
    prune_ratio: float = 0.0  # of the weights (magnitude) or of each FFN's neurons (ffn)
    precision: str = "f32"  # OpenVINO inference precision hint
    smooth_quant: bool = False  # only INT8 "full" quantizes MatMul activations, where it acts
    samples: int = DEFAULT_SAMPLES  # calibration samples; not part of the cache key
    deepcache_branch: int | None = None  # None: one model; b: DeepCache's full + shallow at branch b

    def __post_init__(self) -> None:
        if self.int8 not in INT8_MODES:
            raise ValueError(f"INT8 mode must be one of {INT8_MODES}, not {self.int8!r}")
        if not 0.0 <= float(self.tome) <= MAX_RATIO:
            raise ValueError(f"the token merging ratio must be between 0 and {MAX_RATIO}, not {self.tome}")
        if self.prune not in PRUNE_MODES:
            raise ValueError(f"pruning must be one of {PRUNE_MODES}, not {self.prune!r}")
        if self.prune != "off" and not 0.0 < float(self.prune_ratio) <= MAX_PRUNE_RATIO:
            raise ValueError(f"the pruning ratio must be in (0, {MAX_PRUNE_RATIO}], not {self.prune_ratio}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        if self.deepcache_branch is not None and int(self.deepcache_branch) < 0:
            raise ValueError(f"the DeepCache branch must not be negative, not {self.deepcache_branch}")
        needs_samples = self.int8 in CALIBRATED_INT8 or self.prune == "ffn"
        if needs_samples and int(self.samples) < 1:
            raise ValueError("a calibrated recipe needs at least one calibration sample")
        # Canonical form: what changes nothing is written one way only.
        set_field = object.__setattr__
        set_field(self, "tome", round(float(self.tome), 3))
        set_field(self, "prune_ratio", round(float(self.prune_ratio), 4) if self.prune != "off" else 0.0)
        set_field(self, "smooth_quant", bool(self.smooth_quant) and self.int8 == "full")
        set_field(self, "samples", int(self.samples) if needs_samples else DEFAULT_SAMPLES)
        if self.deepcache_branch is not None:
            set_field(self, "deepcache_branch", int(self.deepcache_branch))

    @property
    def needs_calibration(self) -> bool:
        return self.int8 in CALIBRATED_INT8 or self.prune == "ffn"

    @property
    def changes_graph(self) -> bool:
        """True when the IR differs from the plain export (the FP32 IR cannot be reused)."""
        return self.tome > 0 or self.prune != "off"

    @property
    def is_plain(self) -> bool:
        """The plain FP32 export (with or without DeepCache): made on first use, never by Optimize."""
        return self.int8 == "off" and not self.changes_graph and self.precision == "f32"

    @property
    def base(self) -> Recipe:
        """The same recipe as one model (DeepCache's pair serves the base recipe's calls)."""
        return replace(self, deepcache_branch=None)

    def with_deepcache(self, branch: int | None) -> Recipe:
        return replace(self, deepcache_branch=branch)

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
        name = "-".join(p.lower().replace("%", "").replace("+", "") for p in self.parts()) or "fp32"
        return name if self.deepcache_branch is None else f"{name}-deepcache-b{self.deepcache_branch}"

    def key(self) -> dict[str, Any]:
        """The cache key: every field that changes the IR, nothing else."""
        if self.base.is_plain:
            key = dict(PLAIN_KEY)
        else:
            fields_ = asdict(self.base)
            del fields_["samples"], fields_["deepcache_branch"]
            key = {"name": self.base.name(), "weights": "int8" if self.int8 != "off" else "fp32", **fields_}
        if self.deepcache_branch is not None:
            key.update(name=self.name(), deepcache_branch=self.deepcache_branch)
        return key

    @classmethod
    def from_key(cls, key: dict[str, Any]) -> Recipe:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in key.items() if k in known})
