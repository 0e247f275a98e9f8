"""Settings → OpenVINO: the options, their defaults, and reading them as the engine's types.

Reads always go through `shared.opts` at the moment of use, so a job's `override_settings`
(which the webui applies without running onchange callbacks) is what that job runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from modules import shared

from sd_ov import (
    DEFAULT_SHAPE_POLICY,
    MAX_DEEPCACHE_BRANCH,
    PRECISIONS,
    SCHEDULES,
    SHAPE_POLICIES,
    VAE_PRECISIONS,
    RuntimeSettings,
    ov_core,
)

from .offload import OFFLOAD_MODES

log = logging.getLogger("sd_ov")

SECTION = ("openvino", "OpenVINO")
# Settings files a section under a category (modules/shared_options.py registers "sd" as "Stable
# Diffusion"): without one it lands under "Uncategorized", far from "SD Unet".
CATEGORY = "sd"
SETTINGS_DEFAULTS: dict[str, Any] = {
    "sd_ov_device": "CPU",
    "sd_ov_precision": "auto",
    "sd_ov_shape_policy": DEFAULT_SHAPE_POLICY,
    "sd_ov_cache_dir": "",
    "sd_ov_max_compiled": 2,
    "sd_ov_cache_compiled": True,
    # -1: the recipe's schedule (a preset's recipe has one). A new key: the one before
    # (sd_ov_deepcache_interval) defaulted to 0, which Settings → Apply saved in every config.json
    # as if chosen, and which would keep every job off the recipe's schedule
    "sd_ov_deepcache_every": -1,
    "sd_ov_deepcache_branch": 0,
    "sd_ov_deepcache_schedule": "uniform",
    "sd_ov_offload": "release",
    "sd_ov_vae": True,
    "sd_ov_vae_precision": "auto",
    "sd_ov_text_encoder": True,
    "sd_ov_text_encoder_int8": False,
    "sd_ov_control_model": True,
    "sd_ov_control_model_int8": False,
    "sd_ov_lora": True,
    "sd_ov_cfg1_skip_uncond": True,
    "sd_ov_use_new_recipe": True,
}
# Settings that change how the served UNet is compiled: a change reopens it.
RUNTIME_KEYS = (
    "sd_ov_device",
    "sd_ov_precision",
    "sd_ov_shape_policy",
    "sd_ov_max_compiled",
    "sd_ov_cache_compiled",
    "sd_ov_offload",
    "sd_ov_lora",
)
# Read at each job (no reopen needed): sd_ov_vae, sd_ov_text_encoder(_int8), sd_ov_control_model(_int8),
# sd_ov_cfg1_skip_uncond, DeepCache.


def opt(key: str) -> Any:
    value = getattr(shared.opts, key, None)
    return SETTINGS_DEFAULTS[key] if value is None else value


def cache_root() -> Path:
    """Settings → OpenVINO → cache folder; by default `<webui>/models/OpenVINO`."""
    custom = str(opt("sd_ov_cache_dir") or "").strip()
    if custom:
        return Path(custom).expanduser()
    from modules import paths

    return Path(paths.models_path) / "OpenVINO"


def runtime_settings() -> RuntimeSettings:
    """This job's runtime settings; bad values (an API override) raise ValueError."""
    return RuntimeSettings(
        device=str(opt("sd_ov_device")),
        precision=str(opt("sd_ov_precision")),
        shape_policy=str(opt("sd_ov_shape_policy")),
        max_compiled=int(opt("sd_ov_max_compiled")),
        cache_compiled=bool(opt("sd_ov_cache_compiled")),
        lora=bool(opt("sd_ov_lora")),
    )


def offload_mode() -> str:
    """What happens to the torch UNet's weights while OpenVINO serves (`offload.OFFLOAD_MODES`)."""
    mode = str(opt("sd_ov_offload"))
    return mode if mode in OFFLOAD_MODES else "release"


def device_choices() -> list[str]:
    """The devices found, and the saved one if it is absent now (a laptop's iGPU in a config.json
    copied to another machine, a driver gone): gradio 4 refuses a Dropdown value that is not one
    of its choices, which would fail Settings → Apply for every section. The absent device then
    says so at the next job, and torch serves."""
    try:
        found = ov_core.device_choices()
    except Exception as err:  # OpenVINO broken: the settings page must still render
        log.warning("sd-ov: cannot list OpenVINO devices: %s", err)
        found = ["CPU"]
    saved = str(opt("sd_ov_device") or "")
    return [*found, saved] if saved and saved not in found else found


def device_names() -> str:
    try:
        return ov_core.describe_devices()
    except Exception as err:
        log.warning("sd-ov: cannot name OpenVINO devices: %s", err)
        return "CPU"


def register(on_runtime_change) -> None:
    """Add the options (the webui's on_ui_settings); `on_runtime_change` runs on Settings → Apply."""
    import gradio as gr

    def add(key: str, label: str, component=None, component_args=None, info: str = "") -> None:
        option = shared.OptionInfo(
            SETTINGS_DEFAULTS[key], label, component, component_args, section=SECTION, category_id=CATEGORY
        )
        shared.opts.add_option(key, option.info(info) if info else option)

    add(
        "sd_ov_device",
        "OpenVINO device",
        gr.Dropdown,
        lambda: {"choices": device_choices()},
        f"found at start: {device_names()}; AUTO lets OpenVINO choose; an absent device leaves torch serving",
    )
    add(
        "sd_ov_precision",
        "Inference precision",
        gr.Radio,
        {"choices": list(PRECISIONS)},
        "auto: f32 on CPU, f16 on GPU and NPU (VAE and text encoder always f32); bf16/f16 are faster "
        "only where the device runs them natively",
    )
    add(
        "sd_ov_shape_policy",
        "Shapes",
        gr.Radio,
        {"choices": list(SHAPE_POLICIES)},
        "dynamic: one compiled model for every size (memory stays flat); "
        "static: a compiled copy per size (NPU always runs static)",
    )
    add(
        "sd_ov_max_compiled",
        "Compiled shapes kept in memory",
        gr.Slider,
        {"minimum": 1, "maximum": 6, "step": 1},
    )
    add("sd_ov_cache_compiled", "Keep compiled blobs on disk (faster start)", gr.Checkbox)
    add(
        "sd_ov_use_new_recipe",
        "After Optimize, use the new recipe (it becomes the current SD Unet)",
        gr.Checkbox,
    )
    add(
        "sd_ov_offload",
        "Torch UNet while OpenVINO serves",
        gr.Radio,
        {"choices": list(OFFLOAD_MODES)},
        "release: torch's weights of what OpenVINO serves leave memory and come back from the checkpoint "
        "file when torch needs them; the OpenVINO models stay compiled and give their buffers back after "
        "their part of a job; lowvram: the compiled models go too (lightest; each job compiles them again, "
        "from the blob cache); none: everything kept (fastest, uses as much memory again)",
    )
    add(
        "sd_ov_vae",
        "VAE through OpenVINO (decode, and encode for img2img)",
        gr.Checkbox,
        None,
        "while an OpenVINO UNet serves",
    )
    add(
        "sd_ov_vae_precision",
        "VAE precision",
        gr.Radio,
        {"choices": list(VAE_PRECISIONS)},
        "auto: bf16 on a CPU that runs bf16 faster than f32 (AVX512-BF16, AMX; about 2x, pictures within "
        "~47 dB of f32), f32 elsewhere; never f16 (f16 VAEs give black pictures)",
    )
    add(
        "sd_ov_text_encoder",
        "Text encoders through OpenVINO (SD1, SD2, both of SDXL's)",
        gr.Checkbox,
        None,
        "the webui still parses prompts, emphasis and embeddings; torch encodes when a LoRA changes the "
        "text encoder",
    )
    add(
        "sd_ov_text_encoder_int8",
        "Text encoders with INT8 weights",
        gr.Checkbox,
        None,
        "a quarter of their memory (SDXL: 0.7 instead of 2.8 GB for OpenCLIP-G); prompts encode "
        "slightly differently from torch's (docs/memory.md has the figures)",
    )
    add(
        "sd_ov_lora",
        "LoRA on the OpenVINO UNet",
        gr.Checkbox,
        None,
        "a low-rank branch beside each layer takes the prompt's LoRAs and their weights without a "
        "recompile; off: the graph has no branch, and a job with a UNet LoRA runs on torch",
    )
    add(
        "sd_ov_control_model",
        "ControlNet's control models through OpenVINO",
        gr.Checkbox,
        None,
        "sd-webui-controlnet's ControlNet units (not Union): each control model is exported at its first "
        "use and cached; off: they run on torch (their residuals still go into the OpenVINO UNet)",
    )
    add(
        "sd_ov_control_model_int8",
        "ControlNet's control models with INT8 weights",
        gr.Checkbox,
        None,
        "a quarter of their size (SD1.5's: 267 instead of 1064 MB) and ~1.1x faster per call on a CPU; "
        "their residuals move slightly from torch's (docs/controlnet.md has the figures)",
    )
    add(
        "sd_ov_cfg1_skip_uncond",
        "At CFG 1, skip the negative prompt's half of each UNet call",
        gr.Checkbox,
        None,
        "CFG 1 (LCM, Turbo) weighs it by zero: OpenVINO jobs ask the webui's own 'Ignore negative prompt "
        "during early sampling' = 1 for that job (the same picture, half the UNet work); not with AND",
    )
    add("sd_ov_cache_dir", "Cache folder (empty: models/OpenVINO)", gr.Textbox)
    add(
        "sd_ov_deepcache_every",
        "DeepCache: full UNet every N calls (-1: the recipe's schedule, 0: off)",
        gr.Slider,
        {"minimum": -1, "maximum": 10, "step": 1},
        "reuses the deep features in between; 3 ≈ 2x faster",
    )
    add(
        "sd_ov_deepcache_branch",
        "DeepCache: skip branch",
        gr.Slider,
        {"minimum": 0, "maximum": MAX_DEEPCACHE_BRANCH, "step": 1},
        "0 recomputes the least between full calls (fastest); deeper ones recompute more, closer to no cache",
    )
    add(
        "sd_ov_deepcache_schedule",
        "DeepCache: schedule",
        gr.Radio,
        {"choices": list(SCHEDULES)},
        "non-uniform spends more full calls early, where the layout forms",
    )
    for key in RUNTIME_KEYS:
        # call=False: the webui's default would run it now, at registration, before any model is served
        shared.opts.onchange(key, on_runtime_change, call=False)
