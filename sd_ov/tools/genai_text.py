"""The text side of a GenAI folder: `text_encoder[_2]/` and `tokenizer[_2]/`.

GenAI's SD1.x pipeline reads output 0 of `text_encoder` (the prompt's hidden states: sd-ov bakes
the clip skip asked for into it). Its SDXL pipeline reads output `num_hidden_layers + 1` of both
encoders — in transformers' output order (`last_hidden_state`, `pooler_output` /
`text_embeds`, then every `hidden_states`) that is the raw penultimate layer, what sgm's SDXL
conditioner reads (A1111's default for SDXL, where clip skip does not apply) — and output 0 of
`text_encoder_2` as the pooled `text_embeds`. The encoders are transformers' own classes with the
checkpoint file's weights (never a LoRA the webui merged into its live weights): SDXL's OpenCLIP
bigG tower is converted from open_clip's layout to `CLIPTextModelWithProjection`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import openvino as ov
import torch

from ..errors import SdOvError, UnsupportedModelError
from ..graphs.export import save_ir, trace_to_openvino

MODEL_XML = "openvino_model.xml"
TOKENIZER_XML = "openvino_tokenizer.xml"
DETOKENIZER_XML = "openvino_detokenizer.xml"
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
SD2_OPEN_CLIP_PREFIX = "cond_stage_model.model."
# open_clip's text tower in a checkpoint → transformers' CLIP names, per block
_OPEN_CLIP_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


class PromptHidden(torch.nn.Module):
    """input_ids → the layer the webui reads at this clip skip, final-layer-normed (SD1.x)."""

    def __init__(self, clip: torch.nn.Module, skip: int) -> None:
        super().__init__()
        self.clip, self.skip = clip, skip

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.clip(input_ids=input_ids, output_hidden_states=True)
        return self.clip.text_model.final_layer_norm(out.hidden_states[-self.skip])


class EveryOutput(torch.nn.Module):
    """input_ids → transformers' outputs in their order, every hidden state included: what
    GenAI's SDXL pipeline indexes (`CLIPTextModel` or `CLIPTextModelWithProjection`)."""

    def __init__(self, clip: torch.nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.clip(input_ids=input_ids, output_hidden_states=True, return_dict=True)
        first = out.text_embeds if hasattr(out, "text_embeds") else out.last_hidden_state
        second = out.last_hidden_state if hasattr(out, "text_embeds") else out.pooler_output
        return (first, second, *out.hidden_states)


def sdxl_prompt_states(
    clip_l: torch.nn.Module, bigg: torch.nn.Module, ids_l: torch.Tensor, ids_g: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(context [B, 77, 768 + 1280], pooled [B, 1280]) as sgm's conditioner makes them for SDXL:
    each encoder's raw penultimate layer, side by side, and bigG's projected end token."""
    with torch.no_grad():
        a = clip_l(input_ids=ids_l, output_hidden_states=True).hidden_states[-2]
        b = bigg(input_ids=ids_g, output_hidden_states=True)
    return torch.cat([a, b.hidden_states[-2]], dim=-1), b.text_embeds


def open_clip_text_model_from_checkpoint(
    path: str | Path, prefix: str = SDXL_OPEN_CLIP_PREFIX
) -> torch.nn.Module:
    """transformers' `CLIPTextModelWithProjection` with the weights of the open_clip text tower
    under `prefix` (SDXL's bigG): q/k/v split out of `in_proj`, the projection transposed; its
    config read off the weights (a head per 64 channels, open_clip's default; GELU). The end token
    is found by argmax, as open_clip finds it (`eos_token_id=2`: transformers' legacy rule)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from ..graphs.ldm_unet import read_checkpoint

    src = {k[len(prefix) :]: v.float() for k, v in read_checkpoint(path).items() if k.startswith(prefix)}
    if "token_embedding.weight" not in src or "text_projection" not in src:
        raise UnsupportedModelError(f"{Path(path).name} holds no OpenCLIP text tower under {prefix}")
    vocab, width = src["token_embedding.weight"].shape
    blocks = 1 + max(int(k.split(".")[2]) for k in src if k.startswith("transformer.resblocks."))
    config = CLIPTextConfig(
        vocab_size=int(vocab),
        hidden_size=int(width),
        intermediate_size=int(src["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        num_hidden_layers=blocks,
        num_attention_heads=max(1, int(width) // 64),
        max_position_embeddings=int(src["positional_embedding"].shape[0]),
        projection_dim=int(src["text_projection"].shape[1]),
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        eos_token_id=2,
    )
    state = {
        "text_model.embeddings.token_embedding.weight": src["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": src["positional_embedding"],
        "text_model.final_layer_norm.weight": src["ln_final.weight"],
        "text_model.final_layer_norm.bias": src["ln_final.bias"],
        "text_projection.weight": src["text_projection"].t().contiguous(),
    }
    for i in range(blocks):
        old, new = f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        for kind in ("weight", "bias"):
            for q, part in zip("qkv", src[f"{old}attn.in_proj_{kind}"].chunk(3), strict=True):
                state[f"{new}self_attn.{q}_proj.{kind}"] = part
            for a, b in _OPEN_CLIP_BLOCK.items():
                state[f"{new}{b}.{kind}"] = src[f"{old}{a}.{kind}"]
    model = CLIPTextModelWithProjection(config).eval()
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        unmatched = (missing + result.unexpected_keys)[:3]
        raise UnsupportedModelError(f"the OpenCLIP tower does not convert: {unmatched}")
    return model


def write_text_encoder(
    module: torch.nn.Module, clip: torch.nn.Module, target: Path, architecture: str
) -> None:
    """`module` (input_ids → outputs) traced into `target/openvino_model.xml`, its input
    `input_ids` of any batch, with `clip`'s config.json."""
    positions = int(clip.config.max_position_embeddings)
    with torch.no_grad():
        model = trace_to_openvino(module.float().eval(), (torch.ones(1, positions, dtype=torch.long),))
    model.inputs[0].get_tensor().set_names({"input_ids"})
    count = len(model.outputs)
    names = ["last_hidden_state"] if count == 1 else _output_names(architecture, count)
    for port, name in zip(model.outputs, names, strict=True):
        port.get_tensor().set_names({name})
    model.reshape({"input_ids": ov.PartialShape([-1, positions])})
    save_ir(model, target / MODEL_XML)
    config = clip.config.to_dict()
    config["architectures"] = [architecture]
    write_json(target / "config.json", config)


def _output_names(architecture: str, count: int) -> list[str]:
    first = (
        ["text_embeds", "last_hidden_state"]
        if architecture.endswith("WithProjection")
        else [
            "last_hidden_state",
            "pooler_output",
        ]
    )
    return first + [f"hidden_states.{i}" for i in range(count - 2)]


def write_tokenizer(tokenizer: Any, target: Path) -> None:
    """openvino-tokenizers' tokenizer and detokenizer of `tokenizer` (and its transformers files)."""
    try:
        from openvino_tokenizers import convert_tokenizer
    except ImportError as err:
        raise SdOvError(
            "openvino-tokenizers is not installed: `pip install openvino-tokenizers` (the same version "
            "as openvino) makes the tokenizer GenAI reads"
        ) from err
    target.mkdir(parents=True, exist_ok=True)
    try:
        tokenizer_ir, detokenizer_ir = convert_tokenizer(tokenizer, with_detokenizer=True)
    except (ImportError, RuntimeError, AttributeError, TypeError) as err:
        # A1111 v1.10 pins transformers 4.30 / tokenizers 0.13: openvino-tokenizers' converter
        # needs newer ones (Forge's 4.46 / 0.20 work), and the webui's pins must not move
        import tokenizers
        import transformers

        raise SdOvError(
            "openvino-tokenizers cannot convert the tokenizer with this transformers "
            f"{transformers.__version__} / tokenizers {tokenizers.__version__} ({type(err).__name__}): "
            "export with `python -m sd_ov export-genai --checkpoint <file> --recipe <label> "
            "--cache <webui>/models/OpenVINO --out <folder>` from a Python with openvino-genai "
            "(`pip install openvino-genai`)"
        ) from err
    ov.save_model(tokenizer_ir, str(target / TOKENIZER_XML))
    ov.save_model(detokenizer_ir, str(target / DETOKENIZER_XML))
    tokenizer.save_pretrained(str(target))  # the transformers files, for other readers


def padded_with(tokenizer: Any, pad: str) -> Any:
    """A copy of `tokenizer` that pads with `pad`: SDXL's second tokenizer pads with "!" (id 0,
    open_clip's padding) where the first pads with its end token."""
    other = copy.deepcopy(tokenizer)
    other.pad_token = pad
    return other


def write_json(path: Path, data: dict) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
