"""LoRA on a compiled UNet: a low-rank branch beside every Linear and convolution of the graph,
whose matrices are OpenVINO state variables set per job.

A LoRA changes a layer's output by `up @ (down @ x) * scale`. Merging that into the weights would
mean a new graph, a new compile, and a second copy of the weights for every LoRA set and weight.
Instead each adaptable layer gets `y + up @ (down @ x)` where `down` [rank, in] and `up`
[out, rank] (the scale folded in) are `ReadValue` variables of dynamic rank, as OpenVINO GenAI
serves LoRA to LLMs. The base weights stay constants (an INT8 recipe keeps its INT8 weights),
several LoRAs are concatenated along the rank, and switching LoRAs or their weights only sets the
infer request's states: no export, no compile. A variable never set is empty (rank 0): the branch
adds nothing, so the picture without LoRA is the base model's.

A kxk convolution's LoRA (LoCon, LCM-LoRA: `down` a kxk conv of rank r, `up` a 1x1 conv) can't be
a Convolution whose weights are a variable of dynamic rank: the CPU plugin takes no convolution
weights of dynamic shape. So the down conv is one MatMul of all its taps, `down` [kh*kw*r, in]
(set_states reorders torch's [r, in, kh, kw]), followed by the sum of each tap's r channels
shifted by the tap's offset (`_kxk_low`). Cutting the input into patches instead
(`ExtractImagePatches`) cost ~5 GiB of buffers for SD1.5 at 512², even at rank 0.

Not served here (the host runs such a job on torch and says why): grouped convolutions, and layers
a recipe changed (pruned widths).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import openvino as ov
import openvino.opset13 as ops
from openvino import PartialShape, Type
from openvino.op.util import Variable, VariableInfo

from ..errors import SdOvError

LINEAR_TAG = "/aten::linear/"
CONV_TAG = "/aten::_convolution/"
MODULE_PREFIX = "__module."


class UnsupportedLoraError(SdOvError):
    """A LoRA layer this graph has no branch for, or of another shape: the job runs on torch."""


@dataclass(frozen=True)
class LoraLayer:
    """One layer's low-rank update: `down` [rank, in], `up` [out, rank], scale and multiplier
    already folded into `up`."""

    down: np.ndarray
    up: np.ndarray

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclass(frozen=True)
class BranchSlot:
    """Where a layer's branch lives in the graph: its variables and the shapes they take."""

    layer: str  # the torch module's path in the UNet, e.g. input_blocks.1.1.proj_in
    kind: str  # "linear", "conv1x1" or "conv" (kxk)
    in_features: int  # as torch's weight counts them: in channels * kh * kw for a conv
    out_features: int
    kernel: tuple[int, int] = (1, 1)

    @property
    def channels(self) -> int:
        """Width of the `down` variable: in features, or a conv's input channels (one block of
        rows per kernel tap)."""
        return self.in_features // (self.kernel[0] * self.kernel[1])

    @property
    def down_id(self) -> str:
        return f"lora_down:{self.layer}"

    @property
    def up_id(self) -> str:
        return f"lora_up:{self.layer}"


def layer_path(friendly_name: str) -> str | None:
    """The torch module path of a MatMul/Convolution that `convert_model` made from a Linear or
    Conv2d (`__module.<path>/aten::linear/MatMul`); None for any other node."""
    if not friendly_name.startswith(MODULE_PREFIX) or not (
        LINEAR_TAG in friendly_name or CONV_TAG in friendly_name
    ):
        return None
    return friendly_name[len(MODULE_PREFIX) :].split("/", 1)[0]


def _variable(name: str, shape: list[int]) -> tuple[ov.Node, ov.Node]:
    info = VariableInfo()
    info.data_shape = PartialShape(shape)
    info.data_type = Type.f32
    info.variable_id = name
    variable = Variable(info)
    read = ops.read_value(variable)  # no initializer: empty (rank 0) until a state is set
    return read, ops.assign(read, variable)


def _activation(node: ov.Node) -> ov.Output:
    """The layer's input; before a FakeQuantize an INT8 hybrid recipe put there, so the branch
    sees the float activation."""
    source = node.input_value(0)
    if source.get_node().get_type_name() == "FakeQuantize":
        source = source.get_node().input_value(0)
    return source


def _static_dims(port: ov.Output) -> list[int] | None:
    shape = port.get_partial_shape()
    return [d.get_length() for d in shape] if shape.is_static else None


def _ints(values) -> list[int]:
    return [int(v) for v in values]


def _slot_for(node: ov.Node, layer: str) -> BranchSlot | None:
    weight = _static_dims(node.input_value(1))
    if weight is None:
        return None
    kind = node.get_type_name()
    if kind == "MatMul" and len(weight) == 2:
        transposed = node.get_attributes().get("transpose_b", False)
        out_f, in_f = weight if transposed else weight[::-1]
        return BranchSlot(layer, "linear", int(in_f), int(out_f))
    if kind == "Convolution" and len(weight) == 4:
        attrs = node.get_attributes()
        out_c, in_c, kh, kw = (int(d) for d in weight)
        pointwise = (kh, kw) == (1, 1) and _ints(attrs["strides"]) == [1, 1]
        if pointwise and not any(_ints(attrs["pads_begin"]) + _ints(attrs["pads_end"])):
            return BranchSlot(layer, "conv1x1", in_c, out_c)
        return BranchSlot(layer, "conv", in_c * kh * kw, out_c, (kh, kw))
    return None


def _i64(values) -> ov.Node:
    return ops.constant(np.array(values, np.int64))


def _kxk_low(x: ov.Output, down: ov.Output, conv: ov.Node, kernel: tuple[int, int]) -> ov.Node:
    """The down conv of a kxk LoRA, [B, r, H', W']: one MatMul gives every tap's r channels at
    every pixel, `y[tap] = down[tap] @ x`; the conv's output is then the sum over taps of `y[tap]`
    shifted by the tap's offset (a strided Slice of the padded `y`). All of it is r channels wide,
    so the cost follows the LoRA's rank: nothing at rank 0, and no copy of x per tap."""
    attrs = conv.get_attributes()
    strides, dilations = _ints(attrs["strides"]), _ints(attrs["dilations"])
    taps = kernel[0] * kernel[1]
    y = ops.matmul(down, ops.reshape(x, _i64([0, 0, -1]), special_zero=True), False, False)
    x_shape = ops.shape_of(x)
    rank = ops.divide(ops.gather(ops.shape_of(down), _i64([0]), _i64(0)), _i64([taps]))
    batch, spatial = ops.gather(x_shape, _i64([0]), _i64(0)), ops.gather(x_shape, _i64([2, 3]), _i64(0))
    y = ops.reshape(y, ops.concat([batch, _i64([taps]), rank, spatial], 0), special_zero=False)
    pads_begin, pads_end = _ints(attrs["pads_begin"]), _ints(attrs["pads_end"])
    y = ops.pad(y, _i64([0, 0, 0, *pads_begin]), _i64([0, 0, 0, *pads_end]), "constant")
    out_hw = ops.gather(ops.shape_of(conv.output(0)), _i64([2, 3]), _i64(0))
    span = ops.add(ops.multiply(ops.subtract(out_hw, _i64([1, 1])), _i64(strides)), _i64([1, 1]))
    total = None
    for tap in range(taps):
        i, j = divmod(tap, kernel[1])
        offset = _i64([i * dilations[0], j * dilations[1]])
        start = ops.concat([_i64([tap]), offset], 0)
        stop = ops.concat([_i64([tap + 1]), ops.add(offset, span)], 0)
        piece = ops.slice(y, start, stop, _i64([1, *strides]), _i64([1, 3, 4]))
        piece = ops.squeeze(piece, _i64([1]))
        total = piece if total is None else ops.add(total, piece)
    return total


def _branch(node: ov.Node, slot: BranchSlot) -> tuple[ov.Output, list[ov.Node]]:
    down, down_assign = _variable(slot.down_id, [-1, slot.channels])
    up, up_assign = _variable(slot.up_id, [slot.out_features, -1])
    return low_rank_delta(node, slot, down, up), [down_assign, up_assign]


def low_rank_delta(node: ov.Node, slot: BranchSlot, down: ov.Node, up: ov.Node) -> ov.Output:
    """The layer's low-rank update `up @ (down @ x)` of its input, shaped as its output."""
    x = _activation(node)
    if slot.kind == "linear":  # x [..., in]
        low = ops.matmul(x, down, False, True)
        delta = ops.matmul(low, up, False, True)
    else:  # x [B, in, H, W]: as matrices [B, in, H*W], so no transposes
        if slot.kind == "conv":
            low = ops.reshape(_kxk_low(x, down, node, slot.kernel), _i64([0, 0, -1]), special_zero=True)
        else:
            low = ops.matmul(down, ops.reshape(x, _i64([0, 0, -1]), special_zero=True), False, False)
        delta = ops.reshape(
            ops.matmul(up, low, False, False), ops.shape_of(node.output(0)), special_zero=False
        )
    return delta.output(0)


def adaptable_layers(model: ov.Model) -> Iterator[tuple[ov.Node, BranchSlot]]:
    """Each Linear's and Conv2d's node with its slot, once per layer path."""
    seen: set[str] = set()
    for node in model.get_ordered_ops():
        if node.get_type_name() not in ("MatMul", "Convolution"):
            continue
        layer = layer_path(node.get_friendly_name())
        if layer is None or layer in seen:
            continue
        slot = _slot_for(node, layer)
        if slot is not None:
            seen.add(layer)
            yield node, slot


def add_after(node: ov.Node, targets: list, delta: ov.Output) -> None:
    """`node`'s output plus `delta` into `targets` (its consumers before the branch was made:
    the branch reads the output's shape itself)."""
    total = ops.add(node.output(0), delta)
    total.set_friendly_name(f"{node.get_friendly_name()}/lora")
    for target in targets:
        target.replace_source_output(total.output(0))


def add_lora_branches(model: ov.Model) -> dict[str, BranchSlot]:
    """Give every Linear and Conv2d of `model` (in place) a branch of empty state; returns the
    slots by layer path. A grouped convolution is a GroupConvolution node: left as it is."""
    slots: dict[str, BranchSlot] = {}
    sinks: list[ov.Node] = []
    for node, slot in list(adaptable_layers(model)):
        targets = list(node.output(0).get_target_inputs())
        delta, assigns = _branch(node, slot)
        add_after(node, targets, delta)
        slots[slot.layer] = slot
        sinks.extend(assigns)
    if sinks:
        model.add_sinks(sinks)
    return slots


def resolve(slots: Mapping[str, BranchSlot], layer: str) -> BranchSlot | None:
    """The slot of a torch layer path; a graph made from a wrapper (DeepCache's `unet.`) carries
    one more leading component."""
    found = slots.get(layer)
    if found is not None:
        return found
    matches = [slot for path, slot in slots.items() if path.endswith("." + layer)]
    return matches[0] if len(matches) == 1 else None


def check_layers(
    slots: Mapping[str, BranchSlot], layers: Mapping[str, LoraLayer], *, every_layer: bool = True
) -> dict[str, LoraLayer]:
    """`layers` by slot path, checked against the graph. every_layer: a layer the graph lacks is an
    error (a model that holds only part of the UNet, DeepCache's shallow one, passes False)."""
    placed: dict[str, LoraLayer] = {}
    for layer, update in layers.items():
        slot = resolve(slots, layer)
        if slot is None:
            if every_layer:
                raise UnsupportedLoraError(f"no LoRA branch for layer {layer} in this OpenVINO UNet")
            continue
        shape_ok = update.down.shape == (update.rank, slot.in_features) and update.up.shape == (
            slot.out_features,
            update.rank,
        )
        if not shape_ok:
            raise UnsupportedLoraError(
                f"LoRA for {layer} has down {tuple(update.down.shape)} / up {tuple(update.up.shape)}; "
                f"the OpenVINO layer is {slot.out_features}x{slot.in_features}"
            )
        placed[slot.layer] = update
    return placed


def set_states(
    request: ov.InferRequest, slots: Mapping[str, BranchSlot], placed: Mapping[str, LoraLayer]
) -> None:
    """Put `placed` (from `check_layers`) into a request's variables; every other branch is reset
    to empty. Only states change: nothing recompiles."""
    values: dict[str, np.ndarray] = {}
    for layer, update in placed.items():
        slot = slots[layer]
        down = update.down
        if slot.kind == "conv":  # torch's [r, in, kh, kw] to one [r, in] block per tap: [kh*kw*r, in]
            taps_first = down.reshape(update.rank, slot.channels, *slot.kernel).transpose(2, 3, 0, 1)
            down = taps_first.reshape(-1, slot.channels)
        values[slot.down_id] = np.ascontiguousarray(down, dtype=np.float32)
        values[slot.up_id] = np.ascontiguousarray(update.up, dtype=np.float32)
    for state in request.query_state():
        value = values.get(state.name)
        if value is None:
            state.reset()
        else:
            state.state = ov.Tensor(value)


def concatenate(parts: Iterable[Mapping[str, LoraLayer]]) -> dict[str, LoraLayer]:
    """Several LoRAs as one: per layer, their ranks side by side (`up_a @ down_a + up_b @ down_b`
    is `[up_a up_b] @ [down_a; down_b]`)."""
    merged: dict[str, list[LoraLayer]] = {}
    for part in parts:
        for layer, update in part.items():
            merged.setdefault(layer, []).append(update)
    return {
        layer: updates[0]
        if len(updates) == 1
        else LoraLayer(
            np.concatenate([u.down for u in updates], 0), np.concatenate([u.up for u in updates], 1)
        )
        for layer, updates in merged.items()
    }
