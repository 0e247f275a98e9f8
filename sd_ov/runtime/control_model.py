"""ControlNet's control model on OpenVINO: (x, hint, timesteps, context[, y]) → the residuals of
each input block and of the middle block, as cldm's `ControlNet.forward` returns them.

Why: with the UNet on OpenVINO, a ControlNet job's control model (SD1.5: 361 M parameters, the
UNet's encoder again) on torch is most of each step (issue #24: ~1.3x per job). It is traced
like the UNet (`traceable_unet.traceable`: SDPA attention, the webui's attention variants set aside),
with batch, latent size, hint size and prompt length free, and cached per control model (its
weights' digest: the extension's model object does not name its file).

INT8 weights (Settings → OpenVINO; NNCF's `compress_weights`, no calibration): a quarter of the
IR and of its compiled weights. Measured (`bench/control_model.py`: SD1.5's control model, seeded
random weights, 512², batch 2, float parts at bf16; AMD EPYC Zen 4, 2 threads, 2026-12-03): bf16
1.89 s per call, INT8 weights 1.68 s (rel. L2 0.009 to torch's residuals), IR 1064 → 267 MB;
INT8 hybrid (activations of the convolutions too) 1.39 s at 0.018, but it needs calibration
inputs that look like the user's hints, which a control model's first use does not have.

Only cldm's ControlNet layout is exported: a `hint` input, one residual per input block and one
after the middle block. ControlNet Union's extra control-type input stays on torch.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import openvino as ov
import torch

from ..errors import UnsupportedModelError
from ..graphs.export import convert_module, save_ir
from ..progress import ProgressFn, silent
from ..store import cache, fs
from ..store.module_entry import prepare_module_entry
from ..store.recipe import Recipe
from .compiled import EntryPart
from .compress import compress_ir

CONTROL_IR = "control_model.xml"
COMPONENT = "control"


def _first_conv(module: torch.nn.Module) -> torch.nn.Conv2d:
    conv = next((m for m in module.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if conv is None:
        raise UnsupportedModelError("the control model has no convolution where its input should be")
    return conv


def _hint_scale(hint_block: torch.nn.Module) -> int:
    """How many pixels of the hint make one latent pixel: the product of its convolutions' strides
    (cldm: 8, its hint is the picture; a hint already at latent size: 1)."""
    scale = 1
    for m in hint_block.modules():
        if isinstance(m, torch.nn.Conv2d):
            scale *= int(m.stride[0])
    return scale


def _context_dim(model: torch.nn.Module) -> int:
    for m in model.modules():
        to_k = getattr(m, "to_k", None)
        to_q = getattr(m, "to_q", None)
        if isinstance(to_k, torch.nn.Linear) and to_q is not None and to_k.in_features != to_q.in_features:
            return int(to_k.in_features)  # a cross-attention: keys from the prompt
    raise UnsupportedModelError("the control model has no cross-attention to the prompt")


class _Residuals(torch.nn.Module):
    """The control model as a trace sees it: tensors in, a tuple of residuals out."""

    def __init__(self, model: torch.nn.Module, with_y: bool) -> None:
        super().__init__()
        self.model, self.with_y = model, with_y

    def forward(self, x, hint, timesteps, context, y=None):
        outs = self.model(x=x, hint=hint, timesteps=timesteps, context=context, y=y if self.with_y else None)
        return tuple(outs)


def export_control_model(
    model: torch.nn.Module, folder: Path, progress: ProgressFn = silent, int8_weights: bool = False
) -> dict:
    """Write the control model's IR into `folder` (its weights INT8 with `int8_weights`); returns
    the manifest's fields."""
    started = time.perf_counter()
    if not all(hasattr(model, name) for name in ("input_blocks", "input_hint_block", "zero_convs")):
        raise UnsupportedModelError(f"{type(model).__name__} is not a ControlNet (cldm) control model")
    if getattr(model, "control_add_embedding", None) is not None:
        raise UnsupportedModelError("ControlNet Union's control-type input is not exported")
    if next(model.parameters()).dtype != torch.float32:
        raise UnsupportedModelError("the control model is not float32 (export a float32 copy)")
    in_channels = _first_conv(model.input_blocks).in_channels
    hint_channels = _first_conv(model.input_hint_block).in_channels
    scale = _hint_scale(model.input_hint_block)
    context_dim = _context_dim(model)
    label = getattr(model, "label_emb", None)
    adm = _first_linear_in(label) if label is not None else 0
    gen = torch.Generator().manual_seed(0)
    h, w = 16, 24  # small, non-square, a multiple of the encoder's downsampling
    example = [
        torch.randn(1, in_channels, h, w, generator=gen),
        torch.rand(1, hint_channels, h * scale, w * scale, generator=gen),
        torch.full((1,), 500.0),
        torch.randn(1, 77, context_dim, generator=gen),
    ]
    names = ["x", "hint", "timesteps", "context"]
    shapes = {
        "x": ov.PartialShape([-1, in_channels, -1, -1]),
        "hint": ov.PartialShape([-1, hint_channels, -1, -1]),
        "timesteps": ov.PartialShape([-1]),
        "context": ov.PartialShape([-1, -1, context_dim]),
    }
    if adm:
        example.append(torch.randn(1, adm, generator=gen))
        names.append("y")
        shapes["y"] = ov.PartialShape([-1, adm])
    progress("tracing the control model", 0.0)
    wrapper = _Residuals(model, bool(adm)).eval()
    with torch.no_grad():
        outputs = len(wrapper(*example))
    converted = convert_module(
        wrapper, model, tuple(example), tuple(names), tuple(f"residual{i}" for i in range(outputs)), shapes
    )
    if not int8_weights:
        save_ir(converted, folder / CONTROL_IR)
    else:  # from the saved FP32 IR, as the text encoder's: NNCF reads it mapped, page by page
        stage = folder / "control_model.fp32.xml"
        save_ir(converted, stage)
        del converted
        progress("compressing the control model's weights to INT8", 0.6)
        compress_ir(stage, folder / CONTROL_IR, "weights")
        for path in (stage, stage.with_suffix(".bin")):
            fs.remove_file(path)
    progress("control model exported", 1.0)
    return {
        "models": {"control": CONTROL_IR},
        "timings": {"export_s": time.perf_counter() - started},
    }


def _first_linear_in(module: torch.nn.Module) -> int:
    linear = next((m for m in module.modules() if isinstance(m, torch.nn.Linear)), None)
    if linear is None:
        raise UnsupportedModelError("the control model's class embedding is not a linear layer")
    return int(linear.in_features)


def prepare_control_entry(
    model: torch.nn.Module,
    cache_root: str | Path,
    name: str,
    progress: ProgressFn = silent,
    int8_weights: bool = False,
) -> cache.CacheEntry:
    """The cache entry of this control model (named `name`, keyed by its weights; INT8 weights are
    an entry of their own), exported when absent."""
    return prepare_module_entry(
        model,
        cache_root,
        name,
        COMPONENT,
        lambda folder: export_control_model(model, folder, progress, int8_weights),
        CONTROL_IR,
        "control model",
        progress,
        Recipe(int8="weights") if int8_weights else Recipe(),
    )


class OVControlModel(EntryPart):
    """The control model of one cache entry on a device, compiled (for every shape) at its first call."""

    what = "control model"

    def _opened(self) -> None:
        self.xml = self.entry.ir_path("control")
        self.compiled: ov.CompiledModel | None = None
        self.request: ov.InferRequest | None = None
        self._shapes: set[tuple[int, ...]] = set()  # shapes whose first call read the weights

    def __call__(
        self,
        x: torch.Tensor,
        hint: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """What cldm's `ControlNet.forward` returns: one residual per input block, then the middle's."""
        if self.request is None:
            self.compiled = self.compile(self.xml, self.xml)
            self.request = self.compiled.create_infer_request()
        batch = x.shape[0]
        t = timesteps.detach().reshape(-1).to("cpu", torch.float32)
        inputs = {
            "x": x,
            "hint": hint.expand(batch, -1, -1, -1) if hint.shape[0] == 1 else hint,
            "timesteps": t.expand(batch) if t.numel() == 1 else t,
            "context": context,
        }
        if len(self.compiled.inputs) > 4:  # SDXL's control models take y
            if y is None:
                raise ValueError("this control model takes the vector conditioning y; the call gave none")
            inputs["y"] = y
        arrays = {
            name: np.ascontiguousarray(value.detach().to("cpu", torch.float32).numpy())
            for name, value in inputs.items()
        }
        shape = tuple(d for a in arrays.values() for d in a.shape)
        if shape in self._shapes:
            self.request.infer(arrays, share_inputs=True)
        else:
            with self.pages_given_back(self.xml):
                self.request.infer(arrays, share_inputs=True)
            self._shapes.add(shape)
        return [
            torch.from_numpy(self.request.get_output_tensor(i).data.copy()).to(device=x.device, dtype=x.dtype)
            for i in range(len(self.compiled.outputs))
        ]

    def compiled_models(self) -> list[ov.CompiledModel]:
        return [self.compiled] if self.compiled is not None else []

    def drop_compiled(self) -> None:
        self.compiled = self.request = None
        self._shapes.clear()

    def release(self) -> None:
        self.drop_compiled()
