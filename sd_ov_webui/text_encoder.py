"""The webui's prompt encoding on OpenVINO, while an OpenVINO UNet serves and Settings → OpenVINO →
"Text encoders through OpenVINO" is on: SD1's CLIP-L, SDXL's CLIP-L and OpenCLIP bigG (each its
own graph and cache entry), SD2's OpenCLIP.

Only `encode_with_transformers` of the webui's wrapper (sd_hijack_clip / sd_hijack_open_clip) is
replaced, on the instance: the webui still tokenizes, chunks >75-token prompts, weights emphasis
and looks the tokens up in its own embedding, which inserts textual-inversion vectors; OpenVINO
runs the transformer from those embeddings on, and returns the layer the wrapper's own code reads
(with bigG's pooled output on the tensor, as the webui's conditioner expects). Torch encodes
instead, with the reason in the infotext, when a loaded LoRA changes that text encoder (the Lora
extension applies it inside torch's forward), when the chosen layer is not one the graph has, or
on any failure.
"""

from __future__ import annotations

from pathlib import Path

import torch
from modules import shared

from sd_ov import CheckpointTensors, OVTextEncoder, prepare_text_encoder_entry, token_embedding

from .component import ServedComponent
from .lora import networks_changing, networks_set_aside
from .offload import WebuiWeights, undo_lora_weights
from .progress import cancellable_progress
from .settings import cache_root, opt

# The webui's wrapper classes → the graph kind (sd_ov.runtime.text_encoder.COMPONENTS) and a label.
HOST_CLASSES = {
    "FrozenCLIPEmbedderWithCustomWords": ("clip", "CLIP"),  # SD1.x
    "FrozenCLIPEmbedderForSDXLWithCustomWords": ("clip_hidden", "CLIP-L"),  # SDXL's first
    "FrozenOpenCLIPEmbedder2WithCustomWords": ("open_clip", "OpenCLIP-G"),  # SDXL's second
    "FrozenOpenCLIPEmbedderWithCustomWords": ("open_clip", "OpenCLIP"),  # SD2.x
}


def kind_of(wrapper) -> str | None:
    """The graph kind of a webui text encoder wrapper; None when sd-ov cannot serve it."""
    found = HOST_CLASSES.get(type(wrapper).__name__)
    wrapped = getattr(wrapper, "wrapped", None)
    if found is None or wrapped is None:
        return None
    if found[0] == "open_clip":
        return found[0] if hasattr(getattr(wrapped, "model", None), "transformer") else None
    return found[0] if hasattr(getattr(wrapped, "transformer", None), "text_model") else None


def servable(wrapper) -> bool:
    return kind_of(wrapper) is not None


def text_encoder_slots(sd_model) -> list[tuple[torch.nn.Module, str]]:
    """The servable text encoders of a loaded model, each with its key prefix in the checkpoint:
    SDXL's conditioner holds two (`conditioner.embedders.<i>.`), SD1/SD2 one (`cond_stage_model.`)."""
    conditioner = getattr(sd_model, "conditioner", None)
    if conditioner is not None and hasattr(conditioner, "embedders"):
        found = [(e, f"conditioner.embedders.{i}.") for i, e in enumerate(conditioner.embedders)]
    else:
        found = [(getattr(sd_model, "cond_stage_model", None), "cond_stage_model.")]
    return [(module, prefix) for module, prefix in found if module is not None and servable(module)]


def torch_parts(wrapper) -> tuple[torch.nn.Module, torch.nn.Module, str]:
    """(what is traced, the part whose torch weights may leave memory, that part's key prefix in
    the checkpoint below the wrapper's own). The token embedding, positions and final norms stay
    with the host: it looks tokens up, and SD2 norms the layer it reads."""
    if kind_of(wrapper) == "open_clip":
        model = wrapper.wrapped.model
        return model, model.transformer, "model.transformer."
    transformer = wrapper.wrapped.transformer
    return transformer, transformer.text_model.encoder, "transformer.text_model.encoder."


def text_encoder_weights(wrapper, checkpoint_prefix: str, checkpoint_file: str, what: str) -> WebuiWeights:
    _, released, inner = torch_parts(wrapper)
    return WebuiWeights(released, CheckpointTensors(Path(checkpoint_file), checkpoint_prefix + inner), what)


def encode_or_torch(component: ServedComponent, tokens, embedding, encode) -> torch.Tensor:
    """A host's `encode_with_transformers` served: `encode(embeds)` on OpenVINO, or the host's own
    method with the reason. The host's embedding reads and clears its textual-inversion `.fixes`
    (A1111's EmbeddingsWithFixes, Forge's CLIPEmbeddingForTextualInversion): when OpenVINO fails
    they are handed back, so torch sees the same vectors."""
    reason = component.why_torch()
    holder = getattr(embedding, "embeddings", None)
    fixes = getattr(holder, "fixes", None)
    if reason is None:
        out = component.served("prompts", lambda: encode(embedding(tokens)))
        if out is not None:
            return out
        if holder is not None:
            holder.fixes = fixes
    else:
        component.on_torch(reason)
    return component.torch_method("encode_with_transformers")(tokens)


def text_encoder_loras(wrapper: torch.nn.Module) -> list[str]:
    """Loaded networks (the webui's Lora extension) that change this text encoder."""
    return networks_changing(wrapper, "te_multiplier")


class WebuiTextEncoder(ServedComponent):
    methods = ("encode_with_transformers",)
    what = "text encoder"

    def __init__(
        self,
        wrapper,
        checkpoint_name: str,
        checkpoint_hash: str,
        checkpoint_file: str,
        progress,
        checkpoint_prefix: str = "cond_stage_model.",
    ) -> None:
        super().__init__(wrapper, progress)
        self.kind = kind_of(wrapper)
        if self.kind is None:
            raise ValueError(f"{type(wrapper).__name__} is not a text encoder sd-ov serves")
        self.host = type(wrapper).__name__
        self.label = HOST_CLASSES[self.host][1]
        self.what = f"{self.label} text encoder"
        self.wrapped = wrapper.wrapped
        self.traced = torch_parts(wrapper)[0]
        self.checkpoint_name = checkpoint_name
        self.checkpoint_hash = checkpoint_hash
        self.weights = text_encoder_weights(wrapper, checkpoint_prefix, checkpoint_file, f"torch {self.what}")
        self.skip = 1
        self.int8 = False  # the opened model's weights (Settings → text encoders with INT8 weights)

    def sync(self, release_torch: bool) -> None:
        if self.ov is None:
            self.weights.ensure(self.progress)  # exported from them when the cache has no entry
            self.int8 = bool(opt("sd_ov_text_encoder_int8"))
            # The trace runs the Lora extension's patched forwards: with a network loaded they merge
            # it into the weights (baked into the cached IR, or a trace that fails its own check,
            # as a kohya SDXL LoRA from the previous job did in the real webui). The checkpoint's
            # own weights are traced, as for the UNet.
            with networks_set_aside():
                undo_lora_weights(self.module)
                entry = prepare_text_encoder_entry(
                    self.traced,
                    cache_root(),
                    f"{self.checkpoint_name}-text-encoder",
                    self.checkpoint_hash,
                    cancellable_progress,  # an export: Interrupt may stop it (the prompt is then torch's)
                    kind=self.kind,
                    int8_weights=self.int8,
                )
            self.ov = OVTextEncoder(
                entry, device=str(opt("sd_ov_device")), precision="f32", progress=self.progress
            )
        self.attach()
        loras = text_encoder_loras(self.module)
        self.start_job(release_torch and not loras)
        if loras:
            self.on_torch(f"LoRA {', '.join(loras)} changes the text encoder")

    def wants_reopen(self) -> bool:
        """The INT8 setting changed since this encoder was opened."""
        return self.ov is not None and self.int8 != bool(opt("sd_ov_text_encoder_int8"))

    def layer(self) -> tuple[int | None, str | None]:
        """The clip skip (1: last layer) the wrapper's own code would read now, or why not served."""
        wrapped = self.wrapped
        skip_opt = int(getattr(shared.opts, "CLIP_stop_at_last_layers", 1) or 1)
        if self.kind == "clip":
            return skip_opt, None
        if self.kind == "clip_hidden":
            if getattr(shared.opts, "sdxl_clip_l_skip", False) is True:
                return skip_opt, None
            if wrapped.layer == "last":
                return None, "CLIP-L reads its final-normed last layer"
            index = int(wrapped.layer_idx)
            return (-index if index < 0 else self.ov.layers + 1 - index), None
        if getattr(wrapped, "legacy", False):
            return None, "a legacy OpenCLIP embedder"
        if hasattr(wrapped, "layer_idx"):
            return 1 + int(wrapped.layer_idx), None
        return None, f"OpenCLIP layer {wrapped.layer!r}"

    def why_torch(self) -> str | None:
        loras = text_encoder_loras(self.module)
        if loras:
            return f"LoRA {', '.join(loras)} changes the text encoder"
        skip, reason = self.layer()
        if reason:
            return reason
        self.skip = skip
        if not 1 <= skip <= self.ov.layers:
            return f"clip skip {skip} is beyond the model's {self.ov.layers} layers"
        return None

    def _run(self, tokens: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        eot = tokens.argmax(dim=-1) if self.kind == "open_clip" else None
        hidden, pooled = self.ov.encode(embeds, self.skip, eot)
        if self.host == "FrozenOpenCLIPEmbedderWithCustomWords":  # SD2 (ldm) norms the layer it reads
            with torch.no_grad():
                return self.wrapped.model.ln_final(hidden)
        if pooled is not None:
            hidden.pooled = pooled  # the webui's FrozenOpenCLIPEmbedder2WithCustomWords does the same
        return hidden

    def _encode_with_transformers(self, tokens):
        return encode_or_torch(self, tokens, token_embedding(self.traced), lambda e: self._run(tokens, e))

    def infotext(self) -> str | None:
        if self.torch_reason:
            return f"torch ({self.torch_reason})"
        if not self.calls:
            return None
        int8 = ", INT8 weights" if self.int8 else ""
        if self.kind == "clip":
            return f"clip skip {self.skip}{int8}"
        pooled = ", pooled" if self.host == "FrozenOpenCLIPEmbedder2WithCustomWords" else ""
        return f"layer -{self.skip}{pooled}{int8}"
