"""Torch UNet → OpenVINO IR, one dynamic model with named inputs.

One dynamic IR is kept on disk; static shapes are reshapes of it made at compile time, so a new
picture size never needs a new export.
"""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path

import openvino as ov
import torch

from ..errors import ExportError
from ..progress import ProgressFn, silent
from ..store.unet_spec import UNetSpec
from .traceable_unet import traceable

INPUT_NAMES = ("x", "timesteps", "context")
OUTPUT_NAME = "out"
IR_NAME = "unet.xml"
# Room needed on disk besides the weights: the XML and OpenVINO's temporary files.
DISK_HEADROOM = 1.10


def input_names(spec: UNetSpec) -> tuple[str, ...]:
    """The IR's inputs, in the UNet forward's order: SDXL's vector conditioning `y` comes last."""
    return (*INPUT_NAMES, "y") if spec.adm_channels else INPUT_NAMES


def example_inputs(spec: UNetSpec, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Small, non-square example inputs: height and width must not be confused in the trace."""
    gen = torch.Generator().manual_seed(0)
    h, w = 2 * spec.downsample, 3 * spec.downsample
    x = torch.randn(batch, spec.in_channels, h, w, generator=gen)
    t = torch.full((batch,), 500.0)
    context = torch.randn(batch, 77, spec.context_dim, generator=gen)
    if spec.adm_channels:
        return x, t, context, torch.randn(batch, spec.adm_channels, generator=gen)
    return x, t, context


def dynamic_shapes(spec: UNetSpec) -> dict[str, ov.PartialShape]:
    """Batch, height, width and context length free; channels fixed."""
    shapes = {
        "x": ov.PartialShape([-1, spec.in_channels, -1, -1]),
        "timesteps": ov.PartialShape([-1]),
        "context": ov.PartialShape([-1, -1, spec.context_dim]),
    }
    if spec.adm_channels:
        shapes["y"] = ov.PartialShape([-1, spec.adm_channels])
    return shapes


def trace_to_openvino(module: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> ov.Model:
    """OpenVINO's converter on one torch.jit trace of `module`. torch's default trace check runs
    the model and traces it a second time to compare the two: 60 % of a UNet's conversion time
    (the tiny test UNet: 10 s of 16). Every caller's output is compared with torch's by its own
    tests and by Optimize's fidelity report, so the check is off, as in OpenVINO's own notebooks."""
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    decoder = TorchScriptPythonDecoder(module, example_input=example, trace_kwargs={"check_trace": False})
    return ov.convert_model(decoder, example_input=example)


def convert_module(
    module: torch.nn.Module,
    unet: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    shapes: dict[str, ov.PartialShape],
) -> ov.Model:
    """Trace `module` (which runs `unet`) with OpenVINO's converter; name and shape its ports."""
    with torch.no_grad(), traceable(unet), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about ldm's shape asserts: harmless here
        model = trace_to_openvino(module, example)
    if len(model.inputs) != len(input_names) or len(model.outputs) != len(output_names):
        raise ExportError(
            f"the converted model has {len(model.inputs)} inputs and {len(model.outputs)} outputs, "
            f"expected {len(input_names)} and {len(output_names)}"
        )
    for port, name in zip(model.inputs, input_names, strict=True):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, output_names, strict=True):
        port.get_tensor().set_names({name})
    model.reshape(shapes)
    return model


def convert_unet(unet: torch.nn.Module, spec: UNetSpec, progress: ProgressFn = silent) -> ov.Model:
    """The plain UNet: (x, timesteps, context) → noise prediction."""
    progress("tracing the torch UNet", 0.0)
    shapes = dynamic_shapes(spec)
    model = convert_module(unet, unet, example_inputs(spec), input_names(spec), (OUTPUT_NAME,), shapes)
    progress("converted", 1.0)
    return model


def save_ir(model: ov.Model, path: Path, fp16: bool = False) -> None:
    """Save an IR; `fp16` halves the file of a model that will run at 16-bit precision anyway."""
    try:
        ov.save_model(model, str(path), compress_to_fp16=fp16)
    except Exception as err:  # a full disk surfaces here as a RuntimeError from OpenVINO
        where = f"the OpenVINO IR {path.name} into {path.parent}"
        raise ExportError(f"saving {where} failed: {err}{_full_disk_note(path.parent)}") from err


def _full_disk_note(folder: Path) -> str:
    """OpenVINO says only `basic_ios::clear: iostream error` when the disk fills."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return f" (the disk is full: {free / 2**30:.1f} GiB free)" if free < 2**30 else ""


def check_disk_space(folder: Path, needed_bytes: int, what: str = "the OpenVINO IR") -> None:
    """Refuse before the work, not after minutes of it with a half-written file."""
    existing = Path(folder)
    while not existing.exists() and existing.parent != existing:  # a cache folder not made yet
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed_bytes * DISK_HEADROOM:
        raise ExportError(
            f"not enough disk space in {folder}: {what} needs about "
            f"{needed_bytes * DISK_HEADROOM / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
        )


def export_unet(
    unet: torch.nn.Module, spec: UNetSpec, folder: Path, progress: ProgressFn = silent
) -> dict[str, float]:
    """Convert and save `unet.xml`/`unet.bin` into `folder`; returns the timings."""
    check_disk_space(folder, spec.parameters * 4)
    started = time.perf_counter()
    model = convert_unet(unet, spec, lambda m, f: progress(m, 0.8 * f))
    converted = time.perf_counter()
    progress("saving the IR", 0.8)
    save_ir(model, folder / IR_NAME)
    del model
    progress("saved", 1.0)
    return {"convert_s": converted - started, "save_s": time.perf_counter() - converted}
