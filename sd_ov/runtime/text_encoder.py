"""The text encoders on OpenVINO, from the token embeddings on (`text_encoder_graphs` says why):
SD1's CLIP-L, SDXL's CLIP-L and OpenCLIP bigG, SD2's OpenCLIP, each one cache entry of its
checkpoint, optionally with INT8 weights (NNCF's `compress_weights`: a quarter of the file and of
the resident weights, which for SDXL's bigG is 2.1 GB of 2.8).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import openvino as ov
import torch

from ..graphs.export import save_ir, trace_to_openvino
from ..graphs.text_encoder_graphs import ClipFromEmbeddings, OpenClipFromEmbeddings
from ..progress import ProgressFn, silent
from ..store import cache, fs
from ..store.recipe import Recipe
from .compiled import EntryPart
from .compress import compress_ir

IR_NAME = "text_encoder.xml"
# What a graph is made from, and the cache component it is filed under. "clip" keeps the
# component name of the first release, so existing SD1 entries stay valid.
COMPONENTS = {
    "clip": "text_encoder",  # transformers CLIPTextModel, final-layer-normed (SD1)
    "clip_hidden": "text_encoder_hidden",  # the same, raw hidden states (SDXL's CLIP-L)
    "open_clip": "text_encoder_open_clip",  # open_clip's text tower (SDXL's bigG, SD2)
}
COMPONENT = COMPONENTS["clip"]
OPEN_CLIP_CONTEXT = 77  # open_clip's causal mask and positions are built for 77 tokens
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


def token_embedding(transformer: torch.nn.Module) -> torch.nn.Module:
    """The token embedding the host keeps, of a CLIPTextModel or an open_clip text tower."""
    if hasattr(transformer, "text_model"):
        return transformer.text_model.embeddings.token_embedding
    return transformer.token_embedding


def _traceable(module: torch.nn.Module, kind: str) -> tuple[torch.nn.Module, tuple, dict]:
    """The module to trace, an example input, and the input shapes the IR keeps."""
    gen = torch.Generator().manual_seed(0)
    if kind == "open_clip":
        width = module.ln_final.normalized_shape[0]
        example = (torch.randn(1, OPEN_CLIP_CONTEXT, width, generator=gen), torch.tensor([5]))
        shapes = {"embeds": ov.PartialShape([-1, OPEN_CLIP_CONTEXT, width]), "eot": ov.PartialShape([-1])}
        return OpenClipFromEmbeddings(module), example, shapes
    width = module.text_model.final_layer_norm.normalized_shape[0]
    example = (torch.randn(1, 77, width, generator=gen),)
    shapes = {"embeds": ov.PartialShape([-1, -1, width])}
    return ClipFromEmbeddings(module, final_norm=kind == "clip"), example, shapes


def export_text_encoder(
    module: torch.nn.Module,
    folder: Path,
    progress: ProgressFn = silent,
    kind: str = "clip",
    int8_weights: bool = False,
) -> dict:
    """Write the IR into `folder` (`kind`: one of COMPONENTS); returns the manifest's fields."""
    if kind not in COMPONENTS:
        raise ValueError(f"text encoder kind must be one of {tuple(COMPONENTS)}, not {kind!r}")
    started = time.perf_counter()
    if next(module.parameters()).dtype != torch.float32:  # f16 in the webui: trace a f32 copy
        module = copy.deepcopy(module).float()
    progress("tracing the text encoder", 0.0)
    traceable, example, shapes = _traceable(module, kind)
    with torch.no_grad():
        model = trace_to_openvino(traceable, example)
    for port, name in zip(model.inputs, shapes, strict=True):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, ("hidden", "pooled")[: len(model.outputs)], strict=True):
        port.get_tensor().set_names({name})
    model.reshape(shapes)
    target = folder / IR_NAME
    if not int8_weights:
        save_ir(model, target)
    else:
        stage = folder / "text_encoder.fp32.xml"
        save_ir(model, stage)
        del model
        progress("compressing the text encoder's weights to INT8", 0.5)
        compress_ir(stage, target, "weights")
        for path in (stage, stage.with_suffix(".bin")):
            fs.remove_file(path)
    progress("text encoder exported", 1.0)
    return {"models": {"text_encoder": IR_NAME}, "timings": {"export_s": time.perf_counter() - started}}


def clip_text_model_from_checkpoint(
    path: str | Path, config, prefix: str = "cond_stage_model.transformer."
) -> torch.nn.Module:
    """transformers' CLIPTextModel of `config` (the host's own model's) with a checkpoint file's
    weights (A1111's key layout): what is exported where the host's live weights may hold a LoRA
    merged in (Forge merges them into its model) and the file's are the checkpoint's own."""
    from transformers import CLIPTextModel

    from ..errors import UnsupportedModelError
    from ..graphs.ldm_unet import read_checkpoint

    state = {k[len(prefix) :]: v for k, v in read_checkpoint(path).items() if k.startswith(prefix)}
    if "text_model.embeddings.token_embedding.weight" not in state:
        raise UnsupportedModelError(f"{Path(path).name} holds no CLIP text model under {prefix}")
    state.pop("text_model.embeddings.position_ids", None)  # a buffer the model makes itself
    model = CLIPTextModel(copy.deepcopy(config)).eval()
    try:
        result = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    except RuntimeError as err:  # other shapes: another text model than the one expected
        width = state["text_model.embeddings.token_embedding.weight"].shape
        raise UnsupportedModelError(
            f"{Path(path).name}'s CLIP text model ({tuple(width)} token embedding) is not the expected "
            f"one ({config.vocab_size} x {config.hidden_size}: SD1.x's CLIP ViT-L/14)"
        ) from err
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise UnsupportedModelError(
            f"the checkpoint's CLIP text model is not the host's: {(missing + result.unexpected_keys)[:3]}"
        )
    return model


def prepare_text_encoder_entry(
    module: torch.nn.Module | Callable[[], torch.nn.Module],
    cache_root: str | Path,
    name: str,
    weights_hash: str,
    progress: ProgressFn = silent,
    kind: str = "clip",
    int8_weights: bool = False,
) -> cache.CacheEntry:
    """The cache entry of this text encoder (`weights_hash` names its weights), exported when absent
    (`module` may be a function making it, called only then)."""
    recipe = Recipe(int8="weights") if int8_weights else Recipe()
    key = cache.EntryKey(name, weights_hash, recipe, component=COMPONENTS[kind])

    def made() -> torch.nn.Module:
        return module if isinstance(module, torch.nn.Module) else module()

    return cache.find_or_write(
        Path(cache_root),
        key,
        lambda folder: export_text_encoder(made(), folder, progress, kind, int8_weights),
        IR_NAME,
        "text encoder",
        progress,
    )


class OVTextEncoder(EntryPart):
    """The text encoder of one cache entry on a device, compiled at its first call."""

    what = "text encoder"

    def _opened(self) -> None:
        self.compiled: ov.CompiledModel | None = None
        self.xml = self.entry.ir_path("text_encoder")
        self.layers = int(self.core.read_model(str(self.xml)).output(0).get_partial_shape()[0].get_length())

    def encode(
        self, embeds: torch.Tensor, skip: int = 1, eot: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The hidden state clip skip `skip` reads (1: the last layer's) and, for an OpenCLIP
        graph (given each prompt's end-token index `eot`), the pooled output."""
        if not 1 <= skip <= self.layers:
            raise ValueError(f"clip skip {skip} is outside 1..{self.layers}")
        if self.compiled is None:
            self.compiled = self.compile(self.xml, self.xml)
        inputs = {0: np.ascontiguousarray(embeds.detach().to("cpu", torch.float32).numpy())}
        if len(self.compiled.inputs) > 1:
            if eot is None:
                raise ValueError("this text encoder needs the index of each prompt's end token")
            inputs[1] = eot.detach().to("cpu", torch.int64).numpy()
        with self.pages_given_back(self.xml):
            outputs = self.compiled.create_infer_request().infer(inputs)

        def back(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(array.copy()).to(device=embeds.device, dtype=embeds.dtype)

        hidden = back(outputs[0][skip - 1])
        return hidden, (back(outputs[1]) if len(outputs) > 1 else None)

    def hidden(self, embeds: torch.Tensor, skip: int = 1) -> torch.Tensor:
        """What the text model gives for clip skip `skip` (1: its last hidden state)."""
        return self.encode(embeds, skip)[0]

    def compiled_models(self) -> list[ov.CompiledModel]:
        return [self.compiled] if self.compiled is not None else []

    def drop_compiled(self) -> None:
        self.compiled = None
