"""The webui's prompt encoding on OpenVINO, while an OpenVINO UNet serves and Settings → OpenVINO →
"Text encoder through OpenVINO" is on.

Only `encode_with_transformers` of SD1.x's `FrozenCLIPEmbedderWithCustomWords` is replaced (on the
instance): the webui still tokenizes, chunks >75-token prompts, weights emphasis and looks the
tokens up in its own embedding, which inserts textual-inversion vectors; OpenVINO runs the
transformer from those embeddings on. Torch encodes instead, with the reason in the infotext,
when a loaded LoRA changes the text encoder (the Lora extension applies it inside torch's
forward), when clip skip is beyond the model's layers, or on any failure.
"""

from __future__ import annotations

from pathlib import Path

import torch
from modules import shared

from sd_ov import CheckpointTensors, OVTextEncoder, prepare_text_encoder_entry, token_embedding

from .component import ServedComponent
from .lora import networks_changing
from .offload import WebuiWeights
from .progress import cancellable_progress
from .settings import cache_root, opt

SERVED_CLASSES = ("FrozenCLIPEmbedderWithCustomWords",)  # SD1.x; SD2's OpenCLIP and SDXL stay on torch
CHECKPOINT_ENCODER_PREFIX = "cond_stage_model.transformer.text_model.encoder."


def servable(cond_stage_model) -> bool:
    return type(cond_stage_model).__name__ in SERVED_CLASSES and hasattr(
        getattr(getattr(cond_stage_model, "wrapped", None), "transformer", None), "text_model"
    )


def text_encoder_loras(cond_stage_model: torch.nn.Module) -> list[str]:
    """Loaded networks (the webui's Lora extension) that change this text encoder."""
    return networks_changing(cond_stage_model, "te_multiplier")


class WebuiTextEncoder(ServedComponent):
    methods = ("encode_with_transformers",)
    what = "text encoder"

    def __init__(
        self, cond_stage_model, checkpoint_name: str, checkpoint_hash: str, checkpoint_file: str, progress
    ) -> None:
        super().__init__(cond_stage_model, progress)
        self.transformer = cond_stage_model.wrapped.transformer
        self.checkpoint_name = checkpoint_name
        self.checkpoint_hash = checkpoint_hash
        encoder = self.transformer.text_model.encoder
        self.weights = WebuiWeights(
            encoder, CheckpointTensors(Path(checkpoint_file), CHECKPOINT_ENCODER_PREFIX), "torch text encoder"
        )
        self.skip = 1

    def sync(self, release_torch: bool) -> None:
        if self.ov is None:
            self.weights.ensure(self.progress)  # exported from them when the cache has no entry
            entry = prepare_text_encoder_entry(
                self.transformer,
                cache_root(),
                f"{self.checkpoint_name}-text-encoder",
                self.checkpoint_hash,
                cancellable_progress,  # an export: Interrupt may stop it (the prompt is then torch's)
            )
            self.ov = OVTextEncoder(
                entry, device=str(opt("sd_ov_device")), precision="f32", progress=self.progress
            )
        self.attach()
        loras = text_encoder_loras(self.module)
        self.start_job(release_torch and not loras)
        if loras:
            self.on_torch(f"LoRA {', '.join(loras)} changes the text encoder")

    def why_torch(self) -> str | None:
        loras = text_encoder_loras(self.module)
        if loras:
            return f"LoRA {', '.join(loras)} changes the text encoder"
        if not 1 <= self.skip <= self.ov.layers:
            return f"clip skip {self.skip} is beyond the model's {self.ov.layers} layers"
        return None

    def _encode_with_transformers(self, tokens):
        self.skip = int(getattr(shared.opts, "CLIP_stop_at_last_layers", 1) or 1)
        reason = self.why_torch()
        embedding = token_embedding(self.transformer)
        hijack = getattr(
            embedding, "embeddings", None
        )  # the webui's EmbeddingsWithFixes reads and clears .fixes
        fixes = getattr(hijack, "fixes", None)
        if reason is None:
            out = self.served("prompts", lambda: self.ov.hidden(embedding(tokens), self.skip))
            if out is not None:
                return out
            if hijack is not None:
                hijack.fixes = fixes  # torch must see the same textual-inversion vectors
        else:
            self.on_torch(reason)
        return self.torch_method("encode_with_transformers")(tokens)

    def infotext(self) -> str | None:
        if self.torch_reason:
            return f"torch ({self.torch_reason})"
        return f"clip skip {self.skip}" if self.calls else None
