"""sd-ov: run Stable Diffusion's UNet, VAE and text encoder through OpenVINO.

The package is importable without the webui; `sd_ov_webui/` adapts it to AUTOMATIC1111's webui
and uses only the names below (`__all__`). They load on first use (PEP 562), so `import sd_ov`
stays light: the webui's Settings page reads the constants without loading OpenVINO or NNCF.
Importing the package turns OpenVINO's and NNCF's telemetry off for this process (`privacy`).

The engine's parts, by job:
- graphs from torch: `ldm_unet`, `export`, `deepcache`, `tome`, `prune`, `text_encoder`, `vae`,
  `control_model`, `taesd` (`module_entry`: their cache entries by weights); `vae_int8` (the VAE
  decoder quantized)
- graph surgery on IRs: `control_inputs`, `lora_branch`
- the OpenVINO runtime: `ov_core`, `cpu_caps`, `compiled` (the base every compiled part shares),
  `runtime` (the UNet), `memory`
- the cache store: `cache`, `cache_removal`, `manifest`, `fs`, `recipe`
- serving: `engine`, `served`, `runtime_settings`, `unet_source`, `record`, `torch_weights`
- optimizing: `optimize`, `measure`, `optimize_pair`, `recipe_ir`, `calibration`, `calibration_unet`,
  `peak_memory`, `compress`, `preset`, `form`, `report`
"""

from __future__ import annotations

import importlib
from typing import Any

from .privacy import telemetry_off

__version__ = "0.1.0"

telemetry_off()

# name → the module that defines it
_PUBLIC = {
    # values (constants.py imports nothing)
    "CHECKPOINT_UNET_PREFIX": "constants",
    "DEFAULT_SHAPE_POLICY": "constants",
    "INT8_MODES": "constants",
    "MAX_DEEPCACHE_BRANCH": "constants",
    "MAX_TOME_RATIO": "constants",
    "PRECISIONS": "constants",
    "PRUNE_MODES": "constants",
    "SCHEDULES": "constants",
    "SHAPE_POLICIES": "constants",
    "VAE_PRECISIONS": "constants",
    # errors
    "Cancelled": "errors",
    "DeviceNotFoundError": "errors",
    "NonFiniteOutputError": "errors",
    "SdOvError": "errors",
    "UnsupportedCallError": "errors",
    "UnsupportedLoraError": "lora_branch",
    "UnsupportedModelError": "errors",
    # what a recipe, a job and an Optimize request are
    "Recipe": "recipe",
    "DeepCacheConfig": "deepcache",
    "PRESETS": "preset",
    "OPTIMIZE_FIELDS": "form",
    "Calibration": "form",
    "OptimizeRequest": "form",
    "parse_optimize_form": "form",
    "default_prompts": "calibration",
    "CapturingUNet": "calibration",
    "JobRecord": "record",
    "run_summary": "runtime_settings",
    # serving
    "ServedUNet": "served",
    "RuntimeSettings": "runtime_settings",
    "UNetSource": "unet_source",
    "describe": "ldm_unet",
    "feature_shapes": "ldm_unet",
    "file_hash": "engine",
    "LoraLayer": "lora_branch",
    "concatenate": "lora_branch",
    "OVVae": "vae",
    "vae_precision": "vae",
    "prepare_vae_entry": "vae",
    "find_int8_decoder": "vae_int8",
    "prepare_taesd_entry": "taesd",
    "quantize_vae_decoder": "vae_int8",
    "OVControlModel": "control_model",
    "prepare_control_entry": "control_model",
    "weights_digest": "module_entry",
    "OVTextEncoder": "text_encoder",
    "prepare_text_encoder_entry": "text_encoder",
    "token_embedding": "text_encoder",
    "CheckpointTensors": "torch_weights",
    "ModuleWeights": "torch_weights",
    "canonical": "cache",
    "trim_heap": "memory",
    "optimize_with_deepcache": "optimize_pair",
    "ProgressFn": "progress",
    "silent": "progress",
}
# Modules used as namespaces (`cache.delete`, `optimize.recipe_entries`, ...).
_MODULES = ("cache", "optimize", "ov_core", "report")

__all__ = sorted([*_PUBLIC, *_MODULES])


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    home = _PUBLIC.get(name)
    if home is None:
        raise AttributeError(f"module 'sd_ov' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value
