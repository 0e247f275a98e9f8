"""A recipe for OpenVINO GenAI from the OpenVINO tab and the API (`sd_ov.tools.genai`): the loaded
checkpoint's plain entry or one of its recipes, written as the folder GenAI's pipelines (and
OpenVINO Model Server) run, under `models/OpenVINO-GenAI/<checkpoint>-<recipe>`.

The tokenizer is the loaded model's own (A1111's CLIP wrapper holds transformers' tokenizer,
Forge's text engine likewise), converted by openvino-tokenizers; the clip skip is the webui's
setting unless the request names one. The text encoder and VAE come from the checkpoint file, so
a LoRA merged into the webui's live weights never leaks into the folder.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from modules import paths, shared

from sd_ov import SdOvError, cache, export_genai, source_from_checkpoint

from .checkpoints import checkpoint_identity
from .genai_lora import baked_loras
from .progress import cancellable_progress
from .settings import cache_root

GENAI_FOLDER = "OpenVINO-GenAI"
CLIP_TOKENIZER_ID = "openai/clip-vit-large-patch14"


def host_clip(sd_model):
    """(the loaded model's CLIP tokenizer as transformers' fast tokenizer, which openvino-tokenizers
    converts; its CLIP text model's config): A1111's `cond_stage_model.wrapped` (SDXL: its first
    embedder's), Forge's text engine (SDXL: its CLIP-L one). SDXL's second tokenizer is this one
    padding with "!", made by the export."""
    from transformers import CLIPTokenizerFast

    # A1111's SDXL: cond_stage_model is the conditioner; its embedders[0] the hijacked CLIP-L
    embedders = getattr(getattr(sd_model, "conditioner", None), "embedders", None)
    first = embedders[0] if embedders else getattr(sd_model, "cond_stage_model", None)
    wrapped = getattr(first, "wrapped", None)
    engine = getattr(sd_model, "text_processing_engine", None) or getattr(
        sd_model, "text_processing_engine_l", None
    )
    tokenizer = getattr(wrapped, "tokenizer", None) or getattr(engine, "tokenizer", None)
    transformer = getattr(wrapped, "transformer", None)
    if transformer is None:
        transformer = getattr(getattr(engine, "text_encoder", None), "transformer", None)
    config = getattr(transformer, "config", None)
    if tokenizer is None and hasattr(wrapped, "model"):
        # A1111's SD2: ldm's FrozenOpenCLIPEmbedder tokenizes with open_clip's own BPE, the same
        # vocabulary as CLIP's (the export converts the tower from the checkpoint file)
        return _cached_clip_tokenizer(), None
    if tokenizer is None or type(transformer).__name__ != "CLIPTextModel":
        raise SdOvError(
            "the loaded model has no CLIP text model sd-ov exports for GenAI (SD1.x and SDXL have one)"
        )
    if not isinstance(tokenizer, CLIPTokenizerFast):
        with tempfile.TemporaryDirectory() as folder:  # the slow tokenizer's files, read as fast
            tokenizer.save_pretrained(folder)
            tokenizer = CLIPTokenizerFast.from_pretrained(folder)
    return tokenizer, config


def _cached_clip_tokenizer():
    from transformers import CLIPTokenizerFast

    try:
        return CLIPTokenizerFast.from_pretrained(CLIP_TOKENIZER_ID)
    except OSError as err:
        raise SdOvError(
            f"the CLIP tokenizer ({CLIP_TOKENIZER_ID}) is not in the Hugging Face cache here: load an "
            "SD1.x checkpoint once (the webui fetches it), then export again"
        ) from err


def host_prediction_type(sd_model) -> str:
    """GenAI's scheduler `prediction_type` of the loaded model: A1111's `parameterization`
    ("v" for SD2 768-v), Forge's predictor's; another kind (EDM, flow) is refused."""
    kind = getattr(sd_model, "parameterization", None)
    if kind is None:
        unet = getattr(getattr(sd_model, "forge_objects", None), "unet", None)
        kind = getattr(getattr(getattr(unet, "model", None), "predictor", None), "prediction_type", "epsilon")
    kind = {"eps": "epsilon", "v": "v_prediction"}.get(kind, kind)
    if kind not in ("epsilon", "v_prediction"):
        raise SdOvError(f"a {kind} model has no GenAI scheduler sd-ov writes (epsilon and v-prediction only)")
    return kind


def genai_folder(checkpoint_name: str, recipe_name: str) -> Path:
    return Path(paths.models_path) / GENAI_FOLDER / f"{checkpoint_name}-{recipe_name}"


def export_recipe(
    entry: cache.CacheEntry,
    clip_skip: int | None = None,
    folder: str | None = None,
    progress=None,
    loras: str | None = None,
    sampler: str | None = None,
):
    """Export `entry` (a recipe of the loaded checkpoint, or its plain entry) for GenAI, with the
    LoRAs of `loras` (`<lora:name:weight>`, as in a prompt) baked in; returns (folder, bytes on
    disk, notes: where GenAI's scheduler is not the webui's `sampler`)."""
    model = shared.sd_model
    info = getattr(model, "sd_checkpoint_info", None)
    if info is None or entry.manifest.checkpoint_name != info.model_name:
        raise SdOvError(
            f"{entry.manifest.recipe.label()} is of {entry.manifest.checkpoint_name}: load that checkpoint "
            "first (its tokenizer and file are the loaded model's)"
        )
    name, sha256 = checkpoint_identity(info)
    skip = int(clip_skip or getattr(shared.opts, "CLIP_stop_at_last_layers", 1) or 1)
    recipe = entry.manifest.recipe
    tokenizer, text_config = host_clip(model)
    source = source_from_checkpoint(
        info.filename,
        cache_root(),
        tokenizer,
        text_config=text_config,
        recipe_label=None if recipe.is_plain else recipe.label(),
        name=name,
        clip_skip=skip,
        digest=sha256,
        prediction_type=host_prediction_type(model),
        progress=progress or cancellable_progress,
    )
    lora = baked_loras(model, loras)
    source = replace(source, lora=lora, sampler=sampler or "Euler")
    default = genai_folder(name, "-".join([recipe.name(), *(n.replace(":", "-") for n in lora.names)]))
    out = export_genai(source, folder or default, progress or cancellable_progress)
    return out, sum(p.stat().st_size for p in out.rglob("*") if p.is_file()), source.notes


def loaded_checkpoint_entry(label: str | None) -> cache.CacheEntry:
    """The loaded checkpoint's entry of recipe `label` (None or "FP32": its plain entry)."""
    info = getattr(shared.sd_model, "sd_checkpoint_info", None)
    if info is None:
        raise SdOvError("no checkpoint is loaded")
    wanted = label or "FP32"
    for entry in cache.list_entries(cache_root()):
        manifest = entry.manifest
        if (
            manifest.component == "unet"
            and manifest.checkpoint_name == info.model_name
            and manifest.recipe.deepcache_branch is None
            and manifest.recipe.label() == wanted
        ):
            return entry
    raise SdOvError(f"no {wanted} UNet of {info.model_name} in the cache: Optimize it (or run a job) first")
