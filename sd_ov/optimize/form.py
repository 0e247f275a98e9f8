"""The Optimize form: its fields, their defaults, and the one parser the tab, the API and the
command line share, so a recipe made from any of them is the same recipe.

Everything is checked here, before any work starts: a wrong size, ratio, prompt list or device
is a `ValueError` (or `DeviceNotFoundError`) with a sentence the person can act on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..constants import MAX_DEEPCACHE_BRANCH
from ..runtime.ov_core import resolve_device
from ..serve.preset import PRESETS
from ..store.recipe import Recipe
from .calibration import default_prompts
from .fields import optimize_defaults, optimize_fields
from .run import Measure

# Sides the compiled SD UNet takes: any latent (side / 8), its skip joins resize as the webui's;
# token merging's 2x2 windows need even latent sides (TOME_SIZE_MULTIPLE).
SIZE_MULTIPLE = 8
TOME_SIZE_MULTIPLE = 16
MAX_SIDE = 4096


@dataclass(frozen=True)
class Calibration:
    """How the sampler runs for calibration (every prompt) and the sample picture (the first)."""

    prompts: tuple[str, ...]
    sampler: str
    width: int
    height: int
    steps: int
    seed: int = 1234


@dataclass(frozen=True)
class OptimizeRequest:
    recipe: Recipe
    calibration: Calibration
    shapes: tuple[tuple[int, int, int, int], ...]  # (UNet batch, latent h, latent w, tokens)
    measure_size: tuple[int, int]
    unet_batch: int
    tokens: int
    device: str
    compare_picture: bool
    deepcache_branch: int | None = None  # also make the recipe's DeepCache pair at this branch
    preset: str = ""  # the preset that set the recipe's fields, if any
    vae_int8: bool = False  # also an INT8 VAE decoder (hosts with a VAE: the webui)

    def measure(self, calls: int = 2) -> Measure:
        width, height = self.measure_size
        return Measure(width, height, batch=self.unet_batch, tokens=self.tokens, calls=calls)


def parse_size(text: str, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """ "512x768" → (512, 768), width x height; sides positive multiples of `multiple`."""
    part = str(text).strip().lower().replace(" ", "")
    try:
        width, height = (int(v) for v in part.split("x"))
    except ValueError as err:
        raise ValueError(f"sizes are WIDTHxHEIGHT, e.g. 512x768; got {text!r}") from err
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE) or width % multiple or height % multiple:
        raise ValueError(
            f"{part}: sides must be multiples of {multiple} px between {multiple} and {MAX_SIDE}"
        )
    return width, height


def parse_sizes(text: str | None, multiple: int = SIZE_MULTIPLE) -> list[tuple[int, int]]:
    """Sizes as typed ("512x512, 768x512"); empty text is no size."""
    parts = [p for p in str(text or "").replace(";", ",").split(",") if p.strip()]
    return [parse_size(p, multiple) for p in parts]


def _number(fields: Mapping[str, Any], name: str) -> Any:
    """A numeric field, checked against its row's bounds (fields.py)."""
    row = optimize_fields()[name]
    kind, low, high = row.kind, row.low, row.high
    try:
        value = kind(fields[name])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a number, not {fields[name]!r}") from err
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low:g} and {high:g}, not {value:g}")
    return value


def parse_deepcache_branch(value: Any) -> int | None:
    """ "off" (or empty, None, -1) → None; a branch number → that branch."""
    if value is None or str(value).strip().lower() in ("", "off", "none", "-1"):
        return None
    try:
        branch = int(str(value).strip())
    except ValueError as err:
        raise ValueError(f"the DeepCache branch is 'off' or a number, not {value!r}") from err
    if not 0 <= branch <= MAX_DEEPCACHE_BRANCH:
        raise ValueError(f"the DeepCache branch must be between 0 and {MAX_DEEPCACHE_BRANCH}, not {branch}")
    return branch


def parse_optimize_form(
    values: Mapping[str, Any], default_device: str = "CPU", sdxl: bool = False
) -> OptimizeRequest:
    """The form's values (any subset of the fields, fields.py) → what Optimize needs; `sdxl`: for
    an SDXL UNet (a preset gives its SDXL recipe)."""
    unknown = set(values) - set(optimize_fields())
    if unknown:
        raise ValueError(f"unknown Optimize fields: {sorted(unknown)}")
    f = {**optimize_defaults(), **{k: v for k, v in values.items() if v is not None or k == "prompts_text"}}
    for row in optimize_fields().values():  # every numeric field within its row's bounds
        if row.low is not None:
            _number(f, row.name)
    preset_name = str(f["preset"] or "none").strip().lower()
    if preset_name not in ("none", *PRESETS):
        raise ValueError(f"preset must be none or one of {sorted(PRESETS)}, not {f['preset']!r}")
    if preset_name != "none":  # the preset's recipe fields win over the form's
        f.update(PRESETS[preset_name].form_values(str(f["device"] or default_device), sdxl))
    recipe = Recipe(
        int8=str(f["int8"]),
        tome=_number(f, "tome"),
        prune=str(f["prune"]),
        prune_ratio=_number(f, "prune_ratio") / 100,
        precision=str(f["precision"]),
        smooth_quant=bool(f["smooth_quant"]),
        samples=_number(f, "samples"),
    )
    if f["prompts_text"] is None:
        prompts = tuple(default_prompts()[:4])
    else:
        prompts = tuple(line.strip() for line in str(f["prompts_text"]).splitlines() if line.strip())
        if not prompts and recipe.needs_calibration:
            raise ValueError(f"{recipe.label()} is calibrated on pictures: give at least one prompt")
    calib_w, calib_h = parse_size(f["calib_size"])  # sampled with the FP32 IR: any size
    batch = _number(f, "batch")
    chunks = _number(f, "chunks")
    unet_batch, tokens = 2 * batch, 77 * chunks  # cond + uncond; 75 tokens a chunk, plus start/end
    multiple = TOME_SIZE_MULTIPLE if recipe.tome > 0 else SIZE_MULTIPLE  # the recipe's IR runs these
    try:
        sizes = parse_sizes(f["sizes_text"], multiple)
        measure_size = parse_size(f["measure_size"], multiple)
    except ValueError as err:
        tome = multiple == TOME_SIZE_MULTIPLE
        why = " (token merging's 2x2 windows need even latent sides)" if tome else ""
        raise ValueError(f"{err}{why}") from err
    shapes = tuple((unet_batch, h // 8, w // 8, tokens) for w, h in sizes)
    return OptimizeRequest(
        recipe=recipe,
        calibration=Calibration(prompts, str(f["sampler"]), calib_w, calib_h, _number(f, "calib_steps")),
        shapes=shapes,
        measure_size=measure_size,
        unet_batch=unet_batch,
        tokens=tokens,
        device=resolve_device(str(f["device"] or default_device)),
        compare_picture=bool(f["compare_picture"]),
        deepcache_branch=parse_deepcache_branch(f["deepcache_branch"]),
        preset="" if preset_name == "none" else preset_name,
        vae_int8=bool(f["vae_int8"]),
    )
