"""A cache entry's manifest as one typed record.

The JSON on disk keeps the layout entries have had since the first release (so existing caches
stay valid); everything else reads it through `Manifest`, never by string keys. `Report` is what
Optimize measured and the tab, the API and the CLI show.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .recipe import Recipe
from .unet_spec import UNetSpec

FORMAT = 1
UNET_INPUTS = ("x", "timesteps", "context")


@dataclass(frozen=True)
class FileRecord:
    size: int
    digest: str


@dataclass(frozen=True)
class Report:
    """Optimize's measurements; every number is optional (measuring can be turned off)."""

    label: str = ""
    device: str = ""
    measure: dict[str, int] | None = None
    torch_s_per_step: float | None = None
    s_per_step: float | None = None
    shallow_s_per_step: float | None = None  # DeepCache's shallow call (s_per_step: the full one)
    shallow_rel_l2: float | None = None  # the shallow call against the full one, fresh cache
    speedup: float | None = None
    rel_l2: float | None = None
    psnr_db: float | None = None
    encoder_psnr_db: float | None = None  # an INT8 VAE encoder's pictures against the float one's
    ssim: float | None = None
    optimize_s: float | None = None
    peak_rss_mib: float | None = None  # Optimize's own peak (sampled), not the process's since it began
    peak_phase: str | None = None  # what Optimize was doing at that peak
    start_rss_mib: float | None = None  # what the process held when Optimize began
    disk_mib: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Manifest:
    checkpoint_name: str
    checkpoint_hash: str
    recipe: Recipe
    ir: str
    files: dict[str, FileRecord]
    unet: UNetSpec | None = None  # the UNet's interface; None for other components
    component: str = "unet"  # or "vae": what the entry's IRs are of
    timings: dict[str, float] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)  # DeepCache: {"full": xml, "shallow": xml}
    feature_channels: int | None = None  # DeepCache: channels of the cached feature
    calibration: dict[str, Any] | None = None  # {"samples": n, "digest": ...}
    report: Report | None = None
    label: str = ""
    preset: str = ""  # the preset (sd_ov/serve/preset.py) that chose this recipe, if one did
    # the DeepCache schedule the recipe runs best with (its preset's, as "interval 4, branch 0,
    # non-uniform"); "": none, the recipe runs without DeepCache unless a job asks
    deepcache_schedule: str = ""
    format: int = FORMAT
    sd_ov: str = ""
    openvino: str = ""
    created: str = ""

    @property
    def disk_bytes(self) -> int:
        return sum(f.size for f in self.files.values())

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": self.format,
            "sd_ov": self.sd_ov,
            "openvino": self.openvino,
            "created": self.created,
            "checkpoint": {"name": self.checkpoint_name, "hash": self.checkpoint_hash},
            "recipe": self.recipe.key(),
            "ir": self.ir,
            "files": {name: asdict(f) for name, f in self.files.items()},
            "disk_bytes": self.disk_bytes,
        }
        if self.unet is not None:
            data["unet"] = self.unet.to_dict()
            data["inputs"] = [*UNET_INPUTS, *(["y"] if self.unet.adm_channels else [])]
        if self.component != "unet":  # UNet manifests keep their first layout
            data["component"] = self.component
            data["models"] = dict(self.models)
        data["timings"] = dict(self.timings)
        if self.recipe.deepcache_branch is not None:
            data["deepcache"] = {
                "branch": self.recipe.deepcache_branch,
                "feature_channels": self.feature_channels,
            }
            data["models"] = dict(self.models)
        if self.label:
            data["label"] = self.label
        if self.preset:
            data["preset"] = self.preset
        if self.deepcache_schedule:
            data["deepcache_schedule"] = self.deepcache_schedule
        if self.calibration is not None or self.label:
            data["calibration"] = self.calibration
        if self.report is not None:
            data["report"] = self.report.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        """Raises KeyError/TypeError/ValueError on a manifest that is not one of ours."""
        deepcache = data.get("deepcache") or {}
        report = data.get("report")
        component = str(data.get("component", "unet"))
        return cls(
            checkpoint_name=str(data["checkpoint"]["name"]),
            checkpoint_hash=str(data["checkpoint"]["hash"]),
            recipe=Recipe.from_key(data["recipe"]),
            ir=str(data["ir"]),
            files={name: FileRecord(int(f["size"]), str(f["digest"])) for name, f in data["files"].items()},
            unet=UNetSpec(**data["unet"]) if component == "unet" else None,
            component=component,
            timings=dict(data.get("timings") or {}),
            models=dict(data.get("models") or {}),
            feature_channels=deepcache.get("feature_channels"),
            calibration=data.get("calibration"),
            report=Report.from_json(report) if isinstance(report, dict) else None,
            label=str(data.get("label", "")),
            preset=str(data.get("preset", "")),
            deepcache_schedule=str(data.get("deepcache_schedule", "")),
            format=int(data.get("format", 0)),
            sd_ov=str(data.get("sd_ov", "")),
            openvino=str(data.get("openvino", "")),
            created=str(data.get("created", "")),
        )
