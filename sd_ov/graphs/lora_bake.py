"""A LoRA built into a UNet graph for good: what a folder that leaves sd-ov (OpenVINO GenAI's)
carries, where no one sets the LoRA branch's states per job."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from .lora_branch import LoraLayer, adaptable_layers, add_after, check_layers, low_rank_delta


def bake_lora(model: ov.Model, layers: Mapping[str, LoraLayer]) -> int:
    """`layers` built into `model` (in place) as constant low-rank branches beside their layers:
    a graph that carries the LoRA by itself (OpenVINO GenAI's folder), its base weights untouched
    (an INT8 recipe keeps its INT8 weights; the branch is f32, a few MB at rank 32). Every layer of
    `layers` must be in the graph (else UnsupportedLoraError); returns how many were baked."""
    found = list(adaptable_layers(model))
    slots = {slot.layer: slot for _, slot in found}
    placed = check_layers(slots, layers)
    for node, slot in found:
        update = placed.get(slot.layer)
        if update is None:
            continue
        down = update.down
        if slot.kind == "conv":  # torch's [r, in, kh, kw] to one [r, in] block per tap
            down = down.reshape(update.rank, slot.channels, *slot.kernel).transpose(2, 3, 0, 1)
            down = down.reshape(-1, slot.channels)
        down_c = ops.constant(np.ascontiguousarray(down, np.float32))
        up_c = ops.constant(np.ascontiguousarray(update.up, np.float32))
        targets = list(node.output(0).get_target_inputs())
        add_after(node, targets, low_rank_delta(node, slot, down_c, up_c))
    model.validate_nodes_and_infer_types()
    return len(placed)
