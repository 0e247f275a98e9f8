"""ControlNet's residuals as inputs of an OpenVINO UNet graph.

A ControlNet adds one residual to each skip connection of the UNet and one to the middle
block's output (13 for SD1/SD2, 10 for SDXL), where the decoder joins them. Instead of a second
export, the graph the runtime reads is given those inputs: at each of the decoder's skip joins
(a 4D Concat of `[h, skip]`), the skip is replaced by `skip + control.i`, and at the first join
`h` (the middle block's output) by `h + control.n`. Any recipe's IR (FP32, INT8, ToMe) takes
them the same way, and the graph stays one model in memory: the runtime opens the plain graph
or this one, never both.

The inputs are numbered as ControlNet's outputs are: `control.i` for input block i, and the last
one (`control.n`, n = number of input blocks) for the middle block.

DeepCache's pair takes them too. Its full graph is the whole UNet: every input. Its shallow graph
joins only input blocks 0..branch, and its first join's `h` is the feature cached at the last
full call, which already holds that call's middle and deep residuals: it takes `control.0` to
`control.branch` and nothing for the middle block, so a shallow call adds the fresh residuals
of its own blocks (bench/controlnet_deepcache.py measured this way at 43 dB from the uncached
ControlNet picture, as close as DeepCache keeps a plain picture).
"""

from __future__ import annotations

import re

import openvino as ov
import openvino.opset13 as ops

from ..errors import SdOvError

CONTROL_PREFIX = "control."
_INPUT_BLOCK = re.compile(r"input_blocks\.(\d+)(?:[./]|$)")
_IN_A_BLOCK = re.compile(r"(?:input_blocks|middle_block|output_blocks)\.")  # a node of a block's own


def control_input_names(input_blocks: int) -> list[str]:
    """The residual inputs, in ControlNet's order: one per input block, then the middle block."""
    return [f"{CONTROL_PREFIX}{i}" for i in range(input_blocks + 1)]


def _skip_block(join: ov.Node) -> int | None:
    """The input block whose output is the join's skip tensor (its producer's friendly name
    carries the torch module path, e.g. `__module.input_blocks.5.1/aten::add/Add`)."""
    found = _INPUT_BLOCK.search(join.input_value(1).get_node().get_friendly_name())
    return int(found.group(1)) if found else None


def skip_joins(model: ov.Model) -> dict[int, ov.Node]:
    """The decoder's skip joins by input block: the UNet forward's own Concats (not a block's, such
    as token merging's inside a transformer) of two 4D tensors whose second one is an input block's
    output. Raises SdOvError when the graph does not have one per input block."""
    joins: dict[int, ov.Node] = {}
    for node in model.get_ordered_ops():
        if node.get_type_name() != "Concat" or node.get_input_size() != 2:
            continue
        if _IN_A_BLOCK.search(node.get_friendly_name()):
            continue
        rank = node.get_output_partial_shape(0).rank
        if not rank.is_static or rank.get_length() != 4:
            continue
        block = _skip_block(node)
        if block is None:
            continue
        if block in joins:
            raise SdOvError(f"this UNet graph joins input block {block}'s output twice: not an SD decoder")
        joins[block] = node
    if not joins or sorted(joins) != list(range(len(joins))):
        raise SdOvError(
            f"this UNet graph's skip joins ({sorted(joins)}) are not one per input block: "
            "ControlNet's residuals have nowhere to go"
        )
    return joins


def _add_input(port: ov.Input, name: str) -> ov.Node:
    """A Parameter shaped like the port's tensor (channels fixed, the rest free), added to it."""
    shape = port.get_partial_shape()
    dims = [d if i == 1 else ov.Dimension() for i, d in enumerate(shape)]
    param = ops.parameter(ov.PartialShape(dims), port.get_element_type(), name=name)
    param.output(0).get_tensor().set_names({name})
    total = ops.add(port.get_source_output(), param)
    total.set_friendly_name(f"{name}/add")
    port.replace_source_output(total.output(0))
    return param


def add_control_inputs(model: ov.Model, middle: bool = True) -> list[str]:
    """Give `model` (in place) ControlNet's residual inputs; returns their names in order.
    middle: False for a graph whose first join takes DeepCache's cached feature, not the middle
    block's output (its residual is in the feature already)."""
    joins = skip_joins(model)
    names = control_input_names(len(joins))[: len(joins) + middle]
    params = [_add_input(joins[block].input(1), names[block]) for block in range(len(joins))]
    if middle:
        params.append(_add_input(joins[len(joins) - 1].input(0), names[-1]))  # the middle block's output
    model.add_parameters(params)
    model.validate_nodes_and_infer_types()
    return names
