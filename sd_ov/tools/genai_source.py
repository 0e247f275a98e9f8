"""What a GenAI export of a single-file checkpoint is made of (`genai.GenAISource`): its recipe's
cache entry, its VAE's entry and its CLIP text model, found or made the way the webui makes them,
so the command line and the webui export the same entries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import SdOvError, UnsupportedModelError
from ..progress import ProgressFn, silent
from .genai import SDXL_VAE_SCALE, GenAISource
from .genai_text import (
    SD2_OPEN_CLIP_PREFIX,
    SDXL_CLIP_L_PREFIX,
    SDXL_OPEN_CLIP_PREFIX,
    open_clip_text_model_from_checkpoint,
    padded_with,
)


def source_from_checkpoint(
    checkpoint: str | Path,
    cache_root: str | Path,
    tokenizer: Any,
    recipe_label: str | None = None,
    name: str | None = None,
    unet_config: dict | None = None,
    text_config: Any = None,
    clip_skip: int = 1,
    digest: str | None = None,
    prediction_type: str = "epsilon",
    progress: ProgressFn = silent,
) -> GenAISource:
    """A single-file SD checkpoint's export: its recipe's cache entry (`recipe_label`, e.g. "INT8
    ToMe0.5", made by Optimize; the plain FP32 entry when None, exported if missing), its VAE's
    entry (the webui's, exported if missing), its CLIP text model from the file (SDXL: both of
    its text encoders; `text_config` is the CLIP-L one's; SD2: its OpenCLIP tower, converted).
    `prediction_type`: "v_prediction" for a v-model (SD2 768-v), as the webui detected it. `digest`: the
    file's SHA-256 where the host knows it already (the webui does)."""
    from ..graphs.ldm_unet import load_unet_from_checkpoint
    from ..optimize.vae_int8 import find_int8_decoder
    from ..runtime.vae import prepare_vae_entry, vae_from_checkpoint
    from ..serve import engine
    from ..store import cache
    from ..store.recipe import Recipe

    path = Path(checkpoint)
    if not path.is_file():
        raise SdOvError(f"no checkpoint file at {path}")
    name = name or path.stem
    if digest is None:
        progress(f"hashing {path.name}", 0.0)
        digest = engine.file_hash(path)
    # the text side first: a checkpoint whose text model is not the expected one is refused
    # before minutes of UNet export
    text = _text_side(path, tokenizer, text_config, clip_skip, prediction_type, progress)
    root = Path(cache_root)
    if recipe_label:
        found = [
            e
            for e in cache.list_entries(root)
            if e.manifest.checkpoint_name == name
            and e.manifest.checkpoint_hash == digest
            and e.manifest.component == "unet"
            and e.manifest.recipe.label() == recipe_label
        ]
        if not found:
            raise SdOvError(f"no recipe {recipe_label!r} of {name} in {root}: make it with Optimize first")
        unet_entry = found[0]
    else:
        unet_entry = engine.prepare_entry(
            lambda: load_unet_from_checkpoint(path, unet_config), root, name, digest, Recipe(), progress
        ).entry
    if bool(unet_entry.manifest.unet.adm_channels) != ("text_encoder_2" in text):
        raise UnsupportedModelError("the checkpoint's UNet and text encoders are not of one architecture")
    vae_entry = prepare_vae_entry(
        lambda: vae_from_checkpoint(path), root, f"{name}-vae-baked", digest, progress
    )
    vae = vae_from_checkpoint(path)
    channels = [int(level.block[-1].conv2.out_channels) for level in vae.encoder.down]
    del vae
    # the webui decodes a recipe with the INT8 decoder Optimize made (its default VAE precision);
    # the plain FP32 entry with the float one
    vae_int8 = find_int8_decoder(vae_entry) if recipe_label else None
    return GenAISource(
        unet_entry=unet_entry, vae_entry=vae_entry, vae_block_channels=channels, vae_int8=vae_int8, **text
    )


def _text_side(path: Path, tokenizer: Any, text_config: Any, clip_skip: int, prediction_type: str, progress):
    """The source's text encoder(s), tokenizer and what goes with them, by what the file holds."""
    from transformers import CLIPTextConfig

    from ..runtime.text_encoder import CLIP_L_CONFIG, clip_text_model_from_checkpoint

    config = text_config if text_config is not None else CLIPTextConfig(**CLIP_L_CONFIG)
    if _has_key(path, SDXL_OPEN_CLIP_PREFIX + "token_embedding.weight"):
        progress("reading SDXL's two text encoders", 0.05)
        return dict(
            text_encoder=clip_text_model_from_checkpoint(path, config, prefix=SDXL_CLIP_L_PREFIX),
            tokenizer=tokenizer,
            clip_skip=1,  # the webui's clip skip does not reach SDXL's encoders (its default)
            notes=[f"SDXL reads the penultimate layers: clip skip {clip_skip} does not apply"]
            if clip_skip != 1
            else [],
            vae_scale=SDXL_VAE_SCALE,
            text_encoder_2=open_clip_text_model_from_checkpoint(path),
        )
    if _has_key(path, SD2_OPEN_CLIP_PREFIX + "token_embedding.weight"):
        # SD2's OpenCLIP ViT-H: ldm's FrozenOpenCLIPEmbedder reads the penultimate block, layer-normed
        # (the webuis' SD2; A1111 applies no clip skip to it); its tokens pad with 0 ("!")
        return dict(
            text_encoder=open_clip_text_model_from_checkpoint(path, SD2_OPEN_CLIP_PREFIX),
            tokenizer=padded_with(tokenizer, "!"),
            clip_skip=2,
            prediction_type=prediction_type,
            notes=["SD2: the text encoder's penultimate layer (ldm's), whatever the clip skip"],
        )
    return dict(
        text_encoder=clip_text_model_from_checkpoint(path, config), tokenizer=tokenizer, clip_skip=clip_skip
    )


def _has_key(path: Path, key: str) -> bool:
    """Whether the checkpoint holds `key` (a .safetensors file's header only)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return key in f.keys()  # noqa: SIM118 - safe_open has no __contains__
    from ..graphs.ldm_unet import read_checkpoint

    return key in read_checkpoint(path)
