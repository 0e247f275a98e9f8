"""The `unet/` of a GenAI folder: the recipe's own IR (INT8 weights, token merging: nothing
re-exported) with GenAI's port names, the timestep as int64, and for SDXL the vector conditioning
rebuilt inside the graph.

sgm's SDXL UNet takes `y` [B, 2816]: the pooled bigG feature (1280) and the sinusoidal embedding
(256 each, cos then sin: sgm's `timestep_embedding`) of the six size numbers — original size,
crop corner, target size — in that order. GenAI hands the UNet `text_embeds` [B, 1280] and
`time_ids` [B, 6] (diffusers' names), so the graph gets those two inputs and makes `y` itself with
OpenVINO's own ops, kept at f32 (a size of 1024 times a frequency of 1 needs f32's precision for
its sine). GenAI's `time_ids` are (width, height, 0, 0, width, height) where sgm's are (height,
width, ...): the same for a square picture.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ..graphs.export import save_ir
from ..graphs.lora_bake import bake_lora
from ..graphs.lora_branch import LoraLayer
from ..store.cache import CacheEntry
from .genai_text import MODEL_XML, write_json

SIZE_EMBED = 256  # sgm's ConcatTimestepEmbedderND outdim for SDXL base
SIZE_NUMBERS = 6


def size_embedding(time_ids: ov.Output) -> ov.Output:
    """sgm's `timestep_embedding(time_ids.flatten(), 256)` regrouped per picture: [B, 6 * 256]."""
    half = SIZE_EMBED // 2
    freqs = np.exp(-math.log(10000.0) * np.arange(half, dtype=np.float64) / half).astype(np.float32)
    flat = ops.reshape(time_ids, ops.constant(np.array([-1, 1], np.int64)), special_zero=False)
    args = ops.multiply(flat, ops.constant(freqs[None, :]))
    emb = ops.concat([ops.cos(args), ops.sin(args)], axis=1)
    grouped = ops.reshape(
        emb, ops.constant(np.array([-1, SIZE_NUMBERS * SIZE_EMBED], np.int64)), special_zero=False
    )
    for node in (flat, args, emb, grouped):
        node.get_rt_info()["precise_0"] = ""  # OpenVINO's disable_fp16_compression mark
    return grouped.output(0)


def with_text_time_inputs(model: ov.Model, pooled_width: int) -> ov.Model:
    """`model` with its `y` input replaced by `text_embeds` [B, pooled_width] and `time_ids` [B, 6]."""
    y = model.input("y").get_node()
    text_embeds = ops.parameter(ov.PartialShape([-1, pooled_width]), ov.Type.f32, name="text_embeds")
    time_ids = ops.parameter(ov.PartialShape([-1, SIZE_NUMBERS]), ov.Type.f32, name="time_ids")
    text_embeds.output(0).get_tensor().set_names({"text_embeds"})
    time_ids.output(0).get_tensor().set_names({"time_ids"})
    made = ops.concat([text_embeds.output(0), size_embedding(time_ids.output(0))], axis=1)
    for target in list(y.output(0).get_target_inputs()):
        target.replace_source_output(made.output(0))
    model.remove_parameter(y)
    model.add_parameters([text_embeds, time_ids])
    model.validate_nodes_and_infer_types()
    return model


def write_unet(entry: CacheEntry, folder: Path, lora: Mapping[str, LoraLayer] | None = None) -> None:
    """The entry's IR as GenAI's `unet/` (SD1.x/SD2: sample, timestep, encoder_hidden_states;
    SDXL adds text_embeds and time_ids), with the config GenAI reads; `lora` baked in."""
    model = ov.Core().read_model(str(entry.ir_path()))
    if lora:
        bake_lora(model, lora)
    spec = entry.manifest.unet
    if spec.adm_channels:
        model = with_text_time_inputs(model, spec.adm_channels - SIZE_NUMBERS * SIZE_EMBED)
    ppp = ov.preprocess.PrePostProcessor(model)
    ppp.input("timesteps").tensor().set_element_type(ov.Type.i64)  # GenAI's timestep: int64 [1]
    model = ppp.build()
    for old, new in {"x": "sample", "timesteps": "timestep", "context": "encoder_hidden_states"}.items():
        model.input(old).get_tensor().set_names({new})
    model.output(0).get_tensor().set_names({"out_sample"})
    save_ir(model, folder / "unet" / MODEL_XML)
    config = {
        "_class_name": "UNet2DConditionModel",
        "in_channels": spec.in_channels,
        "out_channels": spec.out_channels,
        "cross_attention_dim": spec.context_dim,
        # GenAI's default picture: sample_size x the VAE's factor (SD1.x 512², SDXL 1024²)
        "sample_size": 128 if spec.adm_channels else 64,
        "sd_ov_recipe": entry.manifest.recipe.label(),
    }
    if spec.adm_channels:
        config |= {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": SIZE_EMBED,
            "projection_class_embeddings_input_dim": spec.adm_channels,
        }
    write_json(folder / "unet" / "config.json", config)
