"""Optimize's fields, declared once: the tab's components, the API's request model and the command
line's flags are all made from this table, and the form's parser reads its defaults and bounds
here. A new field is one row; the interfaces that show it follow.

A row says what the field holds (default, type, bounds, choices), how a person reads it (label,
help) and where it shows: `group` places it in the tab (the recipe column, the prompts, the
calibration, shapes and measurement rows), `cli` names its flag (None: not on the command line,
for what only a webui has: its sampler, prompts, VAE, a picture to compare).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..constants import INT8_MODES, MAX_DEEPCACHE_BRANCH, MAX_TOME_RATIO, PRECISIONS, PRUNE_MODES
from ..serve.preset import PRESETS

# The tab's groups, in its order: the recipe (left column), the calibration prompts (right), then
# rows under them.
GROUPS = ("recipe", "prompts", "calibration", "shapes", "measure")


@dataclass(frozen=True)
class OptimizeField:
    name: str
    default: Any
    kind: type  # str, int, float or bool: what the value is parsed as
    label: str  # the tab's
    help: str  # the API's description and the CLI's help
    group: str = "recipe"
    widget: str = "textbox"  # radio, dropdown, checkbox, slider, textbox
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] = ()
    low: float | None = None  # bounds the parser enforces
    high: float | None = None
    step: float = 1
    slider: tuple[float, float] | None = None  # the tab's slider range, when narrower than the bounds
    cli: str | None = ""  # the flag ("": --<name with dashes>; None: not on the command line)
    cli_default: Any = field(default=None)  # the command line's default where it differs
    cli_aliases: tuple[str, ...] = ()
    elem_id: str = ""  # the tab's element id ("": sd_ov_<name>); the page's hints find it
    nullable: bool = False  # None is a value (the API's null)

    def options(self) -> tuple[str, ...]:
        return self.choices() if callable(self.choices) else self.choices

    @property
    def flag(self) -> str | None:
        if self.cli is None:
            return None
        return self.cli or "--" + self.name.replace("_", "-")

    @property
    def element(self) -> str:
        return self.elem_id or f"sd_ov_{self.name}"


def _branches() -> tuple[str, ...]:
    return ("off", *(str(b) for b in range(MAX_DEEPCACHE_BRANCH + 1)))


FIELDS: tuple[OptimizeField, ...] = (
    OptimizeField(
        "preset",
        "none",
        str,
        "Preset (fastest: the fastest picture measured)",
        "none, or fastest: the recipe, precision and DeepCache pair of the fastest picture (they override "
        "the recipe's fields)",
        widget="radio",
        choices=lambda: ("none", *PRESETS),
    ),
    OptimizeField(
        "int8",
        "hybrid",
        str,
        "INT8",
        "off, weights, hybrid, hybrid-ff or full",
        widget="radio",
        choices=INT8_MODES,
    ),
    OptimizeField(
        "smooth_quant",
        False,
        bool,
        "SmoothQuant (INT8 full)",
        "SmoothQuant the MatMuls (INT8 full only)",
        widget="checkbox",
        elem_id="sd_ov_sq",
    ),
    OptimizeField(
        "tome",
        0.0,
        float,
        "Token merging ratio",
        f"token merging ratio, 0 to {MAX_TOME_RATIO}",
        widget="slider",
        low=0.0,
        high=MAX_TOME_RATIO,
        step=0.05,
    ),
    OptimizeField(
        "prune", "off", str, "Pruning", "off, magnitude or ffn", widget="radio", choices=PRUNE_MODES
    ),
    OptimizeField(
        "prune_ratio",
        20,
        float,
        "Pruning %",
        "percent of weights (magnitude) or FFN neurons (ffn) pruned when pruning is on",
        widget="slider",
        low=0,
        high=90,
        step=5,
        slider=(5, 80),
        cli="--prune-percent",
    ),
    OptimizeField(
        "precision",
        "f32",
        str,
        "Inference precision",
        "f32, bf16, f16 or auto",
        widget="radio",
        choices=PRECISIONS,
        elem_id="sd_ov_recipe_precision",
    ),
    # On by default: the pair cost 3-4 minutes and 1.1 GB more of an SD1.5 Optimize, 7 minutes and
    # 2.6 GB of SDXL's (AMD EPYC Zen 4, 2 cores; entries' manifests), against a second Optimize of
    # 10-16 minutes for a user who turns DeepCache on later, which halves every picture's UNet time.
    OptimizeField(
        "deepcache_branch",
        "0",
        str,
        "DeepCache pair too (skip branch)",
        "off, or the skip branch of the DeepCache pair (full + shallow model) to make too",
        widget="dropdown",
        choices=_branches,
        elem_id="sd_ov_recipe_deepcache",
    ),
    OptimizeField(
        "vae_int8",
        False,
        bool,
        "INT8 VAE decoder too (served when Settings → VAE precision is auto)",
        "also an INT8 VAE decoder, calibrated on the calibration pictures' latents",
        widget="checkbox",
        cli=None,
    ),
    OptimizeField(
        "device",
        "",
        str,
        "Device",
        "OpenVINO device; empty: Settings → OpenVINO device (CLI: CPU)",
        widget="dropdown",
        elem_id="sd_ov_recipe_device",
        cli_default="CPU",
    ),
    OptimizeField(
        "prompts_text",
        None,
        str,
        "Calibration prompts (one per line)",
        "calibration prompts, one per line (null: the shipped ones)",
        group="prompts",
        cli=None,
        elem_id="sd_ov_prompts",
        nullable=True,
    ),
    OptimizeField(
        "sampler",
        "Euler",
        str,
        "Sampler",
        "the webui sampler for calibration pictures",
        group="calibration",
        widget="dropdown",
        choices=("Euler",),
        cli=None,
    ),
    OptimizeField(
        "calib_size", "256x256", str, "Calibration size", "calibration picture size, WxH", group="calibration"
    ),
    OptimizeField(
        "calib_steps",
        8,
        int,
        "Calibration steps",
        "sampler steps per calibration picture",
        group="calibration",
        widget="slider",
        low=1,
        high=150,
        slider=(2, 30),
    ),
    OptimizeField(
        "samples",
        16,
        int,
        "Calibration samples",
        "calibration samples kept, spread over the noise levels",
        group="calibration",
        widget="slider",
        low=1,
        high=256,
        slider=(1, 64),
    ),
    OptimizeField(
        "sizes_text",
        "512x512",
        str,
        "Sizes to compile ahead",
        "picture sizes to compile ahead, comma separated (e.g. 512x512,768x512)",
        group="shapes",
        elem_id="sd_ov_sizes",
        cli="--sizes",
        cli_default="",
    ),
    OptimizeField(
        "batch",
        1,
        int,
        "Batch size",
        "pictures per batch (the UNet's batch is twice that)",
        group="shapes",
        widget="slider",
        low=1,
        high=8,
    ),
    OptimizeField(
        "chunks",
        1,
        int,
        "Prompt chunks (75 tokens)",
        "prompt chunks of 75 tokens",
        group="shapes",
        widget="slider",
        low=1,
        high=4,
    ),
    OptimizeField(
        "measure_size",
        "512x512",
        str,
        "Measure at",
        "picture size the speed is measured at, WxH",
        group="measure",
        cli_aliases=("--size",),
    ),
    OptimizeField(
        "compare_picture",
        True,
        bool,
        "Compare a sample picture with torch",
        "make a sample picture with torch and the recipe",
        group="measure",
        widget="checkbox",
        elem_id="sd_ov_compare",
        cli=None,
    ),
)


def optimize_fields() -> dict[str, OptimizeField]:
    """The rows by name (read at each call: a test may add a row)."""
    return {f.name: f for f in FIELDS}


def optimize_defaults() -> dict[str, Any]:
    return {f.name: f.default for f in FIELDS}
