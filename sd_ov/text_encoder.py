"""The CLIP text encoder on OpenVINO, from the token embeddings on: the host keeps the token
embedding lookup, so whatever it does there (the webui's textual-inversion embeddings, its
emphasis and >75-token chunking around the call) works unchanged.

One graph serves every "clip skip": its output stacks the final layer norm of each layer's hidden
state, `out[k - 1]` being what skip k gives (`out[0]` is `last_hidden_state`). The layer norms
are cheap beside the 12 layers they follow; a second graph per skip would double the weights.

Traced from the transformers `CLIPTextModel` the host holds (`text_model.embeddings.token_embedding`
swapped for the given embeddings while tracing), so the graph is that model's own code.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import openvino as ov
import torch

from . import cache
from .compiled import CompiledPart
from .export import save_ir
from .progress import ProgressFn, silent
from .recipe import Recipe

COMPONENT = "text_encoder"
IR_NAME = "text_encoder.xml"
# CLIP ViT-L/14's text tower (SD1.x's cond_stage_model): 123 M parameters, 38 M of them the
# token embedding that stays with the host.
CLIP_L_CONFIG = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
)


class _GivenEmbeddings(torch.nn.Module):
    """Stands in for the token embedding while tracing: returns the graph's input."""

    def __init__(self) -> None:
        super().__init__()
        self.value: torch.Tensor | None = None

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.value


class _FromEmbeddings(torch.nn.Module):
    """token embeddings [B, T, C] → final-layer-normed hidden state of every layer [L, B, T, C]."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__()
        self.transformer = transformer
        self.given = _GivenEmbeddings()

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        embeddings = self.transformer.text_model.embeddings
        saved = embeddings.token_embedding
        embeddings.token_embedding, self.given.value = self.given, embeds
        try:
            ids = torch.zeros(embeds.shape[:2], dtype=torch.long)  # only their shape is read
            hidden = self.transformer(input_ids=ids, output_hidden_states=True).hidden_states
        finally:
            embeddings.token_embedding, self.given.value = saved, None
        norm = self.transformer.text_model.final_layer_norm
        return torch.stack([norm(hidden[-k]) for k in range(1, len(hidden))])


def token_embedding(transformer: torch.nn.Module) -> torch.nn.Module:
    return transformer.text_model.embeddings.token_embedding


def export_text_encoder(transformer: torch.nn.Module, folder: Path, progress: ProgressFn = silent) -> dict:
    """Write the IR into `folder`; returns the manifest's fields."""
    started = time.perf_counter()
    if next(transformer.parameters()).dtype != torch.float32:  # f16 in the webui: trace a f32 copy
        transformer = copy.deepcopy(transformer).float()
    progress("tracing the text encoder", 0.0)
    width = transformer.text_model.final_layer_norm.normalized_shape[0]
    example = torch.randn(1, 77, width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model = ov.convert_model(_FromEmbeddings(transformer), example_input=(example,))
    model.inputs[0].get_tensor().set_names({"embeds"})
    model.outputs[0].get_tensor().set_names({"hidden"})
    model.reshape({"embeds": ov.PartialShape([-1, -1, width])})
    save_ir(model, folder / IR_NAME)
    progress("text encoder exported", 1.0)
    return {"models": {"text_encoder": IR_NAME}, "timings": {"export_s": time.perf_counter() - started}}


def prepare_text_encoder_entry(
    transformer: torch.nn.Module,
    cache_root: str | Path,
    name: str,
    weights_hash: str,
    progress: ProgressFn = silent,
) -> cache.CacheEntry:
    """The cache entry of this text encoder (`weights_hash` names its weights), exported when absent."""
    key = cache.EntryKey(name, weights_hash, Recipe(), component=COMPONENT)
    return cache.find_or_write(
        Path(cache_root),
        key,
        lambda folder: export_text_encoder(transformer, folder, progress),
        IR_NAME,
        "text encoder",
        progress,
    )


class OVTextEncoder(CompiledPart):
    """The text encoder of one cache entry on a device, compiled at its first call."""

    what = "text encoder"

    def __init__(
        self,
        entry: cache.CacheEntry,
        device: str = "CPU",
        precision: str = "f32",
        cache_compiled: bool = True,
        progress: ProgressFn = silent,
    ) -> None:
        super().__init__(device, precision, entry.blob_dir if cache_compiled else None, progress)
        self.entry = entry
        self.compiled: ov.CompiledModel | None = None
        self.xml = entry.ir_path("text_encoder")
        self.layers = int(self.core.read_model(str(self.xml)).output(0).get_partial_shape()[0].get_length())

    def hidden(self, embeds: torch.Tensor, skip: int = 1) -> torch.Tensor:
        """What the text model gives for clip skip `skip` (1: its last hidden state)."""
        if not 1 <= skip <= self.layers:
            raise ValueError(f"clip skip {skip} is outside 1..{self.layers}")
        if self.compiled is None:
            self.compiled = self.compile(self.xml, self.xml)
        array = np.ascontiguousarray(embeds.detach().to("cpu", torch.float32).numpy())
        out = self.compiled.create_infer_request().infer({0: array})[0]
        self.settle(self.xml)
        return torch.from_numpy(out[skip - 1].copy()).to(device=embeds.device, dtype=embeds.dtype)

    def compiled_models(self) -> list[ov.CompiledModel]:
        return [self.compiled] if self.compiled is not None else []

    def drop_compiled(self) -> None:
        self.compiled = None
