"""A recipe that leaves the webui: the folder OpenVINO GenAI's `Text2ImagePipeline`,
`Image2ImagePipeline` and `InpaintingPipeline` read (and OpenVINO Model Server's image
generation, built on them), for SD1.x, SD2.x (v-prediction too), SDXL base and their inpainting
checkpoints.

The layout is GenAI's (its `stable_diffusion[_xl]_pipeline.hpp` and models' readers):
`model_index.json` (`_class_name` picks the pipeline), `scheduler/` (genai_scheduler.py),
`text_encoder[_2]/` and `tokenizer[_2]/` (genai_text.py), `unet/` (genai_unet.py),
`vae_decoder/` (`latent_sample` in, `sample` out; its config gives the scale factor) and
`vae_encoder/` (`sample` in, the posterior's `latent_parameters` out, which GenAI samples itself),
each with its `config.json`.

What goes in is the recipe's own: its UNet IR from the cache entry as Optimize made it (INT8
weights, token merging: nothing re-exported, no FP32 copy beside INT8 weights), the VAE's entry
(the one the webui serves), the text encoders made from the checkpoint file's weights, and the
LoRAs asked for baked in (genai_lora.py). Written to a temporary folder beside the target and
moved into place whole: a cancel, a full disk or an error leaves nothing, and an existing folder
is replaced only when the new one is complete.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openvino as ov
import torch

from ..errors import UnsupportedModelError
from ..graphs.export import check_disk_space, save_ir
from ..progress import ProgressFn, silent
from ..store import fs
from ..store.cache import CacheEntry
from .genai_lora import BakedLora, merged
from .genai_scheduler import scheduler_config
from .genai_text import (
    MODEL_XML,
    EveryOutput,
    PromptHidden,
    padded_with,
    write_json,
    write_text_encoder,
    write_tokenizer,
)
from .genai_unet import write_unet

INPAINT_CHANNELS = 9
SD_VAE_SCALE = 0.18215
SDXL_VAE_SCALE = 0.13025


@dataclass
class GenAISource:
    """What one export is made of. `unet_entry`: the recipe's cache entry (or the plain FP32
    one); `vae_entry`: the VAE's entry (decoder and encoder IRs); `text_encoder`: transformers'
    CLIPTextModel with the checkpoint's weights; `tokenizer`: its transformers tokenizer;
    `text_encoder_2`: SDXL's bigG as transformers' CLIPTextModelWithProjection (its tokenizer is
    `tokenizer` padding with "!"), None for SD1.x."""

    unet_entry: CacheEntry
    vae_entry: CacheEntry
    text_encoder: torch.nn.Module
    tokenizer: Any
    vae_block_channels: list[int]
    clip_skip: int = 1
    vae_scale: float = SD_VAE_SCALE
    notes: list[str] = field(default_factory=list)
    text_encoder_2: torch.nn.Module | None = None
    prediction_type: str = "epsilon"
    lora: BakedLora = field(default_factory=BakedLora)
    # the INT8 VAE decoder (and encoder, where Optimize kept one) the webui decodes this recipe with
    vae_int8: CacheEntry | None = None
    sampler: str = "Euler"  # the webui's sampler the scheduler reproduces (genai_scheduler.py)

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None


def refusal(source: GenAISource) -> str | None:
    """Why this source makes no GenAI folder yet (None: it does)."""
    manifest = source.unet_entry.manifest
    if manifest.recipe.deepcache_branch is not None:
        return "a DeepCache pair has no GenAI layout: export the recipe itself (GenAI runs the whole UNet)"
    if manifest.unet.adm_channels and not source.is_sdxl:
        return "a UNet with a vector conditioning and no SDXL text encoders (unCLIP?) has no GenAI layout"
    if manifest.unet.in_channels not in (4, INPAINT_CHANNELS):
        return f"a {manifest.unet.in_channels}-channel UNet (an edit model?) has no GenAI pipeline"
    if source.lora.text_encoder and source.is_sdxl:
        return (
            "a LoRA that changes SDXL's text encoders is not baked into the folder yet: set its text "
            "encoder weight to 0 (`<lora:name:unet_weight:0>`) or export without it"
        )
    if source.is_sdxl and source.clip_skip != 1:
        return (
            "SDXL's folder reads the penultimate layers (GenAI's SDXL pipeline, the webui's default): "
            "clip skip 1 only"
        )
    if not 1 <= source.clip_skip <= source.text_encoder.config.num_hidden_layers:
        return f"clip skip {source.clip_skip} is beyond the text encoder's layers"
    return None


def export_genai(source: GenAISource, out: str | Path, progress: ProgressFn = silent) -> Path:
    """Write the GenAI folder of `source` at `out` (replaced whole if it exists); returns it."""
    why = refusal(source)
    if why:
        raise UnsupportedModelError(why)
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = [e for e in (source.unet_entry, source.vae_entry, source.vae_int8) if e is not None]
    needed = sum(p.stat().st_size for e in parts for p in e.path.glob("*.bin"))
    for encoder in (source.text_encoder, source.text_encoder_2):
        needed += 4 * sum(p.numel() for p in encoder.parameters()) if encoder is not None else 0
    check_disk_space(out.parent, needed)
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        _write(source, staging, progress)
        _move_into_place(staging, out)
    except BaseException:
        fs.remove_tree(staging)
        raise
    progress(f"GenAI folder written: {out}", 1.0)
    return out


def _write(source: GenAISource, folder: Path, progress: ProgressFn) -> None:
    steps = (
        ("the UNet", _write_unet),
        ("the VAE", _write_vae),
        ("the text encoder", _write_text),
        ("the tokenizer", _write_tokenizers),
        ("the pipeline's index", _write_index),
    )
    for i, (what, write) in enumerate(steps):
        progress(f"writing {what} for OpenVINO GenAI", i / len(steps))
        write(source, folder)


def _renamed(model: ov.Model, inputs: dict[str, str], output: str) -> ov.Model:
    for old, new in inputs.items():
        model.input(old).get_tensor().set_names({new})
    model.output(0).get_tensor().set_names({output})
    return model


def _write_unet(source: GenAISource, folder: Path) -> None:
    write_unet(source.unet_entry, folder, source.lora.unet)


def _write_vae(source: GenAISource, folder: Path) -> None:
    core = ov.Core()
    config = {
        "_class_name": "AutoencoderKL",
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "scaling_factor": source.vae_scale,
        "block_out_channels": source.vae_block_channels,
    }
    int8 = source.vae_int8
    decoder = core.read_model(str((int8 or source.vae_entry).ir_path("decoder")))
    save_ir(
        _renamed(decoder, {decoder.inputs[0].any_name: "latent_sample"}, "sample"),
        folder / "vae_decoder" / MODEL_XML,
    )
    with_encoder = int8 if int8 is not None and "encoder" in int8.manifest.models else source.vae_entry
    encoder = core.read_model(str(with_encoder.ir_path("encoder")))
    encoder = _renamed(encoder, {encoder.inputs[0].any_name: "sample"}, "latent_parameters")
    save_ir(encoder, folder / "vae_encoder" / MODEL_XML)
    for part in ("vae_decoder", "vae_encoder"):
        write_json(folder / part / "config.json", config)


def _write_text(source: GenAISource, folder: Path) -> None:
    if source.text_encoder_2 is None:
        clip = merged(source.text_encoder, source.lora.text_encoder)
        write_text_encoder(
            PromptHidden(clip, source.clip_skip), clip, folder / "text_encoder", "CLIPTextModel"
        )
        return
    write_text_encoder(
        EveryOutput(source.text_encoder), source.text_encoder, folder / "text_encoder", "CLIPTextModel"
    )
    write_text_encoder(
        EveryOutput(source.text_encoder_2),
        source.text_encoder_2,
        folder / "text_encoder_2",
        "CLIPTextModelWithProjection",
    )


def _write_tokenizers(source: GenAISource, folder: Path) -> None:
    write_tokenizer(source.tokenizer, folder / "tokenizer")
    if source.text_encoder_2 is not None:
        write_tokenizer(padded_with(source.tokenizer, "!"), folder / "tokenizer_2")


def pipeline_class(source: GenAISource) -> str:
    """GenAI's pipeline for the folder; an inpainting UNet (latent, mask, masked picture's latent:
    ldm's `c_concat` order is diffusers') makes the Inpaint one, which `InpaintingPipeline` runs."""
    inpaint = "Inpaint" if source.unet_entry.manifest.unet.in_channels == INPAINT_CHANNELS else ""
    return f"StableDiffusion{'XL' if source.is_sdxl else ''}{inpaint}Pipeline"


def _write_index(source: GenAISource, folder: Path) -> None:
    scheduler, note = scheduler_config(source.sampler, source.prediction_type)
    if note and note not in source.notes:
        source.notes.append(note)
    write_json(folder / "scheduler" / "scheduler_config.json", scheduler)
    index: dict[str, Any] = {
        "_class_name": pipeline_class(source),
        "_diffusers_version": "0.30.3",
        "_sd_ov": {
            "recipe": source.unet_entry.manifest.recipe.label(),
            "clip_skip": source.clip_skip,
            "loras": source.lora.names,
            "sampler": source.sampler,
            "vae": "INT8 decoder" if source.vae_int8 is not None else "float",
            "notes": source.notes,
        },
        "scheduler": ["diffusers", scheduler["_class_name"]],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if source.is_sdxl:
        index |= {
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            # the webui's SDXL encodes an empty negative prompt as zeros (sgm's force_zero_embeddings)
            "force_zeros_for_empty_prompt": True,
        }
    else:
        index |= {
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
        }
    write_json(folder / "model_index.json", index)


def _move_into_place(staging: Path, out: Path) -> None:
    """The new folder at `out`; an old one there is moved aside first and removed after, so the
    name always holds a whole folder (Windows renames nothing over an existing folder)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        fs.move_into_place(out, old)
    try:
        fs.move_into_place(staging, out)
    except BaseException:
        if old is not None:
            fs.move_into_place(old, out)
        raise
    if old is not None:
        fs.remove_tree(old)
