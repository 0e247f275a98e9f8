"""sd-ov: run Stable Diffusion's UNet, VAE and text encoder through OpenVINO.

The package is importable without the webui; `sd_ov_webui/` adapts it to AUTOMATIC1111's webui
and uses only the names below (`__all__`). They load on first use (PEP 562), so `import sd_ov`
stays light: the webui's Settings page reads the constants without loading OpenVINO or NNCF.
Importing the package turns OpenVINO's and NNCF's telemetry off for this process (`privacy`).

The engine's parts, each a package whose docstring says what it may import (one way, upwards):

    tools/     the command line, the demo and its chart, the OpenVINO GenAI export
    optimize/  run, calibration, compression stages, measurement, the DeepCache pair, the INT8 VAE,
               the form, the report, the sampler and metrics they use
    serve/     the engine (cache or export), the served UNet, its source, presets, the job record
    runtime/   Core and devices, CPU capabilities, CompiledPart and the UNet / VAE / text encoder /
               control model on it, runtime settings, memory, torch weights, weight compression
    graphs/    ldm/sgm UNet, traceable UNet, export, DeepCache's models, ToMe, pruning, text
               encoder and TAESD graphs, ControlNet's inputs, the LoRA branch
    store/     cache entries, lock, removal, usage, manifest, fs, recipe, module entries
    (top)      this API, constants, errors, progress, privacy

`tests/engine/test_layers.py` fails on an import loop or on an import that runs up this list.
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
    "UnsupportedLoraError": "graphs.lora_branch",
    "UnsupportedModelError": "errors",
    # what a recipe, a job and an Optimize request are
    "Recipe": "store.recipe",
    "DeepCacheConfig": "graphs.deepcache",
    "PRESETS": "serve.preset",
    "OptimizeField": "optimize.fields",
    "optimize_fields": "optimize.fields",
    "optimize_defaults": "optimize.fields",
    "Calibration": "optimize.form",
    "OptimizeRequest": "optimize.form",
    "parse_optimize_form": "optimize.form",
    "default_prompts": "optimize.calibration",
    "CapturingUNet": "optimize.calibration",
    "JobRecord": "serve.record",
    "run_summary": "runtime.settings",
    # serving
    "ServedUNet": "serve.served",
    "RuntimeSettings": "runtime.settings",
    "UNetSource": "serve.unet_source",
    "describe": "graphs.ldm_unet",
    "build_unet": "graphs.ldm_unet",
    "config_for_state_dict": "graphs.ldm_unet",
    "is_sgm_config": "graphs.ldm_unet",
    "load_unet_from_checkpoint": "graphs.ldm_unet",
    "feature_shapes": "graphs.ldm_unet",
    "file_hash": "serve.engine",
    "LoraLayer": "graphs.lora_branch",
    "concatenate": "graphs.lora_branch",
    "OVVae": "runtime.vae",
    "vae_precision": "runtime.vae",
    "prepare_vae_entry": "runtime.vae",
    "clip_text_model_from_checkpoint": "runtime.text_encoder",
    "vae_from_checkpoint": "runtime.vae",
    "find_int8_decoder": "optimize.vae_int8",
    "prepare_taesd_entry": "graphs.taesd",
    "quantize_vae_decoder": "optimize.vae_int8",
    "OVControlModel": "runtime.control_model",
    "prepare_control_entry": "runtime.control_model",
    "weights_digest": "store.module_entry",
    "OVTextEncoder": "runtime.text_encoder",
    "prepare_text_encoder_entry": "runtime.text_encoder",
    "token_embedding": "runtime.text_encoder",
    "CheckpointTensors": "runtime.torch_weights",
    "ModuleWeights": "runtime.torch_weights",
    "canonical": "store.cache",
    "trim_heap": "runtime.memory",
    "optimize_with_deepcache": "optimize.pair",
    "recipe_entries": "optimize.run",
    "deepcache_pairs": "optimize.run",
    "optimizable": "optimize.run",
    "ProgressFn": "progress",
    "silent": "progress",
    # a recipe for OpenVINO GenAI
    "GenAISource": "tools.genai",
    "export_genai": "tools.genai",
    "source_from_checkpoint": "tools.genai_source",
    "recipe_schedule": "serve.preset",
    "preset_seconds": "optimize.estimate",
    "BakedLora": "tools.genai_lora",
    "GENAI_SAMPLERS": "tools.genai_scheduler",
}
# Modules used as namespaces (`cache.delete`, `ov_core.available_devices`, ...).
_MODULES = {"cache": "store.cache", "ov_core": "runtime.ov_core", "report": "optimize.report"}

__all__ = sorted([*_PUBLIC, *_MODULES])


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(f".{_MODULES[name]}", __name__)
    home = _PUBLIC.get(name)
    if home is None:
        raise AttributeError(f"module 'sd_ov' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value
