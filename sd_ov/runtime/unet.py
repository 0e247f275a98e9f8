"""A compiled OpenVINO UNet that takes and returns torch tensors.

Shape policy:
- "dynamic" (the default): one compiled model serves every shape, so memory stays flat as
  sizes are added (hires fix, img2img at another size). Measured on SD1.5 (AMD EPYC Zen 4,
  2 cores, FP32): one compiled copy is 3.6 GB; each further size adds ~0.1 GB of buffers;
  per-step time within 2 % of a static model's (4.54 s against 4.46 s at 512², batch 1).
  The CPU plugin reads the IR's weights once more at the first call of a shape (it repacks
  them lazily); we give those pages back while that call reads them (`pages_given_back`), or
  the 2.5 GB of the IR read then would stay resident.
- "static": the IR is reshaped to each call's (batch, channels, H/8, W/8, tokens) and compiled
  for it; the last few compiled shapes are kept. Each keeps its own copy of the weights (+3.4 GB
  per size for SD1.5), so it suits devices that need static shapes (NPU). A job that cycles
  through more shapes than are kept would recompile at every call; a shape evicted and asked for
  again soon after is served by the dynamic model instead, compiled once.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openvino as ov
import torch

from ..constants import DEEPCACHE_FEATURE, DEFAULT_SHAPE_POLICY, PRECISIONS, SHAPE_POLICIES
from ..errors import UnsupportedCallError
from ..graphs.control_inputs import add_control_inputs
from ..graphs.lora_branch import (
    BranchSlot,
    LoraLayer,
    UnsupportedLoraError,
    add_lora_branches,
    check_layers,
    set_states,
)
from ..progress import ProgressFn, silent
from .compiled import CompiledPart

ShapeKey = tuple[int, ...]  # batch, channels, height, width, tokens, then dims of any extra inputs
MAIN_INPUTS = ("x", "timesteps", "context")


@dataclass
class RuntimeStats:
    calls: int = 0
    infer_s: float = 0.0
    compiles: dict[str, float] = field(default_factory=dict)  # shape → seconds


class OVUNet(CompiledPart):
    """The UNet of one cache entry, compiled for one device; call it like the torch UNet."""

    what = "UNet"

    def __init__(
        self,
        xml_path: str | Path,
        *,
        device: str = "CPU",
        precision: str = "f32",
        shape_policy: str = DEFAULT_SHAPE_POLICY,
        max_compiled: int = 2,
        latent_multiple: int = 1,
        blob_dir: str | Path | None = None,
        progress: ProgressFn = silent,
        lora: bool = False,
        control: bool = False,
    ) -> None:
        if shape_policy not in SHAPE_POLICIES:
            raise ValueError(f"shape_policy must be one of {SHAPE_POLICIES}, not {shape_policy!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        super().__init__(device, precision, blob_dir, progress)
        self.shape_policy = shape_policy
        self.max_compiled = max(1, int(max_compiled))
        self.latent_multiple = max(1, int(latent_multiple))  # the IR's: UNetSpec.size_multiple
        self.xml_path = Path(xml_path)
        self.model: ov.Model | None = self.core.read_model(str(xml_path))
        # A batch larger than this runs as several calls (0: never split), so only one call's
        # activations are in memory at a time: for `lowvram`, whose peak for SDXL at 1024² was
        # the UNet with cond and uncond in one call (bench/sdxl.py).
        self.max_batch = 0
        # LoRA: a branch per layer whose matrices are request states (lora_branch.py); off, the
        # graph is the IR's.
        self.lora_slots: dict[str, BranchSlot] = add_lora_branches(self.model) if lora else {}
        self._lora: dict[str, LoraLayer] = {}
        self._lora_version = 0
        self._lora_applied: dict[int, int] = {}  # id(request) → version of the states it holds
        # ControlNet: its residuals as inputs at the skip joins (control_inputs.py); off, none.
        # DeepCache's shallow graph (it takes the cached feature) has no middle block to add to.
        middle = DEEPCACHE_FEATURE not in {name for port in self.model.inputs for name in port.get_names()}
        self.control_inputs: list[str] = add_control_inputs(self.model, middle) if control else []
        x_shape = self.model.input("x").get_partial_shape()
        self.in_channels = x_shape[1].get_length()
        self.context_dim = self.model.input("context").get_partial_shape()[2].get_length()
        # Inputs beyond x/timesteps/context (SDXL's y, DeepCache's cached feature, ControlNet's
        # residuals), in the model's order, with the shapes they take.
        ports = {port.get_any_name(): port.get_partial_shape() for port in self.model.inputs}
        self.extra_inputs = [name for name in ports if name not in MAIN_INPUTS]
        self.extra_shapes = [ports[name] for name in self.extra_inputs]
        self.outputs = len(self.model.outputs)
        self._compiled: OrderedDict[ShapeKey | None, tuple[ov.CompiledModel, ov.InferRequest]] = OrderedDict()
        self._dynamic: tuple[ov.CompiledModel, ov.InferRequest] | None = None
        self._recent: deque[ShapeKey] = deque(maxlen=8)
        self._settled: set[ShapeKey] = set()  # shapes whose first call's page reads were given back
        self.stats = RuntimeStats()

    def shape_key(
        self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, *extra: torch.Tensor
    ) -> ShapeKey:
        if len(extra) != len(self.extra_inputs):
            raise UnsupportedCallError(f"this model takes extra inputs {self.extra_inputs}, got {len(extra)}")
        if x.dim() != 4 or context.dim() != 3:
            raise UnsupportedCallError(
                f"x must be [B,C,H,W] and context [B,T,D]; got {tuple(x.shape)}, {tuple(context.shape)}"
            )
        b, c, h, w = x.shape
        if c != self.in_channels:
            raise UnsupportedCallError(f"this UNet takes {self.in_channels} latent channels, got {c}")
        if context.shape[0] != b or context.shape[2] != self.context_dim:
            raise UnsupportedCallError(
                f"context {tuple(context.shape)} does not fit batch {b} and width {self.context_dim}"
            )
        if h % self.latent_multiple or w % self.latent_multiple:
            raise UnsupportedCallError(
                f"latent {h}x{w} is not a multiple of {self.latent_multiple} (this OpenVINO UNet "
                f"takes picture sides that are multiples of {8 * self.latent_multiple} px)"
            )
        if timesteps.numel() not in (1, b):
            raise UnsupportedCallError(f"{timesteps.numel()} timesteps for a batch of {b}")
        for name, shape, tensor in zip(self.extra_inputs, self.extra_shapes, extra, strict=True):
            if not shape.compatible(ov.PartialShape(list(tensor.shape))):
                raise UnsupportedCallError(f"input {name} takes {shape}, got {list(tensor.shape)}")
        extra_dims = tuple(int(d) for e in extra for d in e.shape)
        return (int(b), int(c), int(h), int(w), int(context.shape[1]), *extra_dims)

    def _shapes(self, key: ShapeKey, extra: tuple[torch.Tensor, ...]) -> dict[str, list[int]]:
        b, c, h, w, t = key[:5]
        shapes = {"x": [b, c, h, w], "timesteps": [b], "context": [b, t, self.context_dim]}
        shapes.update({name: list(e.shape) for name, e in zip(self.extra_inputs, extra, strict=True)})
        return shapes

    def _compile(
        self, key: ShapeKey | None, shapes: dict[str, list[int]] | None = None
    ) -> tuple[ov.CompiledModel, ov.InferRequest]:
        if self.model is None:
            raise RuntimeError("this OpenVINO UNet was released")
        label = "dynamic shapes" if key is None else "x".join(map(str, key))
        model = self.model
        if shapes is not None:
            model = self.model.clone()
            model.reshape(shapes)
        compiled = self.compile(model, self.xml_path, f"UNet for {label}")  # the compiled copy serves
        del model
        self.stats.compiles[label] = self.timings[f"UNet for {label}"]
        return compiled, compiled.create_infer_request()

    def _dynamic_request(self) -> ov.InferRequest:
        if self._dynamic is None:
            self._dynamic = self._compile(None)
        return self._dynamic[1]

    def _request(self, key: ShapeKey, extra: tuple[torch.Tensor, ...] = ()) -> ov.InferRequest:
        thrashing = key in self._recent and key not in self._compiled
        self._recent.append(key)
        if self.shape_policy == "dynamic" or thrashing:
            return self._dynamic_request()
        if key not in self._compiled:
            while len(self._compiled) >= self.max_compiled:
                _, (_, evicted) = self._compiled.popitem(last=False)
                self._lora_applied.pop(id(evicted), None)  # its id may come back with another request
            self._compiled[key] = self._compile(key, self._shapes(key, extra))
        self._compiled.move_to_end(key)
        return self._compiled[key][1]

    def set_lora(self, layers: Mapping[str, LoraLayer], every_layer: bool = True) -> None:
        """The LoRA updates of the next calls (empty: none). Only request states change, at the
        next call of each compiled shape: no recompile. Raises UnsupportedLoraError for a layer
        this graph has no branch for (or every layer, when it was opened without `lora`)."""
        if layers and not self.lora_slots:
            raise UnsupportedLoraError("this OpenVINO UNet was opened without LoRA branches")
        placed = check_layers(self.lora_slots, layers, every_layer=every_layer)
        if placed or self._lora:
            self._lora = placed
            self._lora_version += 1

    @property
    def lora_layers(self) -> int:
        """How many layers the current LoRA set changes."""
        return len(self._lora)

    def apply_lora(self) -> int:
        """Put the current LoRA set into every compiled model's request now (calls do it lazily);
        returns how many requests were updated."""
        requests = [request for _, request in self._compiled.values()]
        requests += [self._dynamic[1]] if self._dynamic is not None else []
        stale = [r for r in requests if self._lora_applied.get(id(r), 0) != self._lora_version]
        if not self.lora_slots:
            return 0
        for request in stale:
            self._with_lora(request)
        return len(stale)

    def _with_lora(self, request: ov.InferRequest) -> ov.InferRequest:
        if self.lora_slots and self._lora_applied.get(id(request), 0) != self._lora_version:
            set_states(request, self.lora_slots, self._lora)
            self._lora_applied[id(request)] = self._lora_version
        return request

    def prepare(self, batch: int, height: int, width: int, tokens: int = 77) -> None:
        """Compile ahead for a shape (latent height/width), so the first step is not slower."""
        extra = []
        for name, shape in zip(self.extra_inputs, self.extra_shapes, strict=True):
            dims = [batch] + [d.get_length() if d.is_static else -1 for d in list(shape)[1:]]
            if -1 in dims:  # e.g. DeepCache's feature: its size follows the call's
                raise ValueError(f"prepare() can't make the input {name} ({shape}); call the model")
            extra.append(torch.zeros(dims))  # e.g. SDXL's y: only its width matters
        key = (batch, self.in_channels, height, width, tokens, *(d for e in extra for d in e.shape))
        self._request(key, tuple(extra))

    def __call__(
        self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, *extra: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """One UNet call; a model with several outputs returns them all, as a tuple."""
        if self.max_batch and x.shape[0] > self.max_batch:
            return self._split(x, timesteps, context, *extra)
        key = self.shape_key(x, timesteps, context, *extra)
        request = self._with_lora(self._request(key, extra))
        batch = key[0]
        t = timesteps.detach().reshape(-1).to("cpu", torch.float32)
        if t.numel() == 1 and batch > 1:
            t = t.expand(batch)
        inputs = {
            "x": np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy()),
            "timesteps": np.ascontiguousarray(t.numpy()),
            "context": np.ascontiguousarray(context.detach().to("cpu", torch.float32).numpy()),
        }
        for name, tensor in zip(self.extra_inputs, extra, strict=True):
            inputs[name] = np.ascontiguousarray(tensor.detach().to("cpu", torch.float32).numpy())
        started = time.perf_counter()
        if key in self._settled:
            request.infer(inputs, share_inputs=True)
        else:  # the first call of a shape repacks the weights it reads (see module doc)
            with self.pages_given_back(self.xml_path):
                request.infer(inputs, share_inputs=True)
            self._settled.add(key)
        outs = tuple(
            torch.from_numpy(request.get_output_tensor(i).data.copy()).to(device=x.device, dtype=x.dtype)
            for i in range(self.outputs)
        )
        self.stats.infer_s += time.perf_counter() - started
        self.stats.calls += 1
        return outs[0] if self.outputs == 1 else outs

    def _split(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The call as calls of `max_batch` rows each (every batch-major input cut alike: x, the
        timesteps, context, y, ControlNet's residuals, DeepCache's feature), outputs joined."""
        batch, step = inputs[0].shape[0], self.max_batch
        parts = [
            self(*(t[i : i + step] if t.dim() and t.shape[0] == batch else t for t in inputs))
            for i in range(0, batch, step)
        ]
        if self.outputs == 1:
            return torch.cat(parts)
        return tuple(torch.cat(outs) for outs in zip(*parts, strict=True))

    def compiled_models(self) -> list[ov.CompiledModel]:
        return [compiled for compiled, _ in self._compiled.values()] + (
            [self._dynamic[0]] if self._dynamic is not None else []
        )

    @property
    def compiled_shapes(self) -> list[ShapeKey | None]:
        """Static shapes held, oldest first, then None if the dynamic model is compiled too."""
        return list(self._compiled) + ([None] if self._dynamic is not None else [])

    def drop_compiled(self) -> None:
        """Free the compiled models but keep the graph: the next call compiles again."""
        self._lora_applied.clear()
        self._compiled.clear()
        self._dynamic = None
        self._recent.clear()
        self._settled.clear()

    def release(self) -> None:
        """Drop compiled models and the graph; memory returns to the system."""
        self._lora_applied.clear()
        self._compiled.clear()
        self._dynamic = None
        self.model = None
