"""Forge's SD1.x prompt encoding on OpenVINO, while an OpenVINO UNet serves and Settings → OpenVINO
→ "Text encoders through OpenVINO" is on.

Forge encodes prompts with its own text engine (`backend/text_processing/classic_engine.py`,
`ClassicTextProcessingEngine`), a port of A1111's: it tokenizes, chunks, weights emphasis and looks
tokens up in its own embedding (which inserts textual-inversion vectors), then calls its
`encode_with_transformers(tokens)`. That one method is served on OpenVINO, on the engine instance,
from the token embeddings on, as A1111's (`text_encoder.py`): the same graph and cache entry, the
clip skip the engine reads (`max(clip_skip, minimal_clip_skip)`, final-layer-normed). The IR is
exported from transformers' CLIPTextModel of the engine's config loaded with the checkpoint
file's weights (Forge merges a LoRA into its live ones).

Torch encodes instead, with the reason in the infotext: a LoRA on Forge's CLIP patcher, an engine
that reads pooled outputs or unnormed layers (SDXL's, SD2's: not served in Forge yet), any
failure. Forge's CLIP keeps its weights (its memory manager moves them itself).
"""

from __future__ import annotations

from pathlib import Path

from modules import shared

from sd_ov import OVTextEncoder, clip_text_model_from_checkpoint, prepare_text_encoder_entry, token_embedding

from .component import ServedComponent
from .progress import cancellable_progress
from .settings import cache_root, opt
from .text_encoder import encode_or_torch


def forge_sd1_engine(sd_model):
    """Forge's SD1.x text engine (CLIP-L, final-layer-normed, no pooled output), or None."""
    engine = getattr(sd_model, "text_processing_engine", None)
    if engine is None or type(engine).__name__ != "ClassicTextProcessingEngine":
        return None
    clip = getattr(getattr(engine, "text_encoder", None), "transformer", None)
    if type(clip).__name__ != "CLIPTextModel" or getattr(engine, "return_pooled", False):
        return None
    return engine if getattr(engine, "embedding_key", "clip_l") == "clip_l" else None


def clip_loras() -> list[str]:
    """LoRAs Forge's Lora extension put on the job's CLIP patcher (they change the text encoder)."""
    clip = getattr(shared.sd_model.forge_objects, "clip", None)
    patches = getattr(getattr(clip, "patcher", None), "lora_patches", {}) or {}
    return [
        f"{Path(str(filename)).stem}:{float(strength):g}"
        for (filename, strength, *_), p in patches.items()
        if p
    ]


class ForgeTextEncoder(ServedComponent):
    """OpenVINO's `encode_with_transformers` set on Forge's SD1.x text engine; `detach()` undoes it."""

    methods = ("encode_with_transformers",)
    what = "CLIP text encoder"
    kind = "clip"
    label = "CLIP"

    def __init__(self, engine, checkpoint_name: str, checkpoint_hash: str, checkpoint_file: str, progress):
        super().__init__(engine, progress)
        self.transformer = engine.text_encoder.transformer
        self.checkpoint_name = checkpoint_name
        self.checkpoint_hash = checkpoint_hash
        self.checkpoint_file = checkpoint_file
        self.skip = 1

    def sync(self, release_torch: bool) -> None:
        if self.ov is None:
            config, path = self.transformer.config, self.checkpoint_file
            entry = prepare_text_encoder_entry(
                lambda: clip_text_model_from_checkpoint(path, config),
                cache_root(),
                f"{self.checkpoint_name}-text-encoder",
                self.checkpoint_hash,
                cancellable_progress,
                kind=self.kind,
            )
            self.ov = OVTextEncoder(
                entry, device=str(opt("sd_ov_device")), precision="f32", progress=self.progress
            )
        self.attach()
        self.start_job(False)

    def wants_reopen(self) -> bool:
        return False

    def why_torch(self) -> str | None:
        loras = clip_loras()
        if loras:
            return f"LoRA {', '.join(loras)} changes the text encoder"
        engine = self.module
        if not getattr(engine, "final_layer_norm", True):
            return "Forge's engine reads an unnormed layer"
        self.skip = max(int(engine.clip_skip), int(getattr(engine, "minimal_clip_skip", 1)))
        if not 1 <= self.skip <= self.ov.layers:
            return f"clip skip {self.skip} is beyond the model's {self.ov.layers} layers"
        return None

    def _encode_with_transformers(self, tokens):
        embedding = token_embedding(self.transformer)
        return encode_or_torch(self, tokens, embedding, lambda e: self.ov.encode(e, self.skip, None)[0])

    def infotext(self) -> str | None:
        if self.torch_reason:
            return f"torch ({self.torch_reason})"
        return f"clip skip {self.skip}" if self.calls else None
