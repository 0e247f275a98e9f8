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

from .errors import ExportError
from .ldm_unet import UNetSpec, traceable
from .progress import ProgressFn, silent

INPUT_NAMES = ("x", "timesteps", "context")
OUTPUT_NAME = "out"
IR_NAME = "unet.xml"
# Room needed on disk besides the weights: the XML and OpenVINO's temporary files.
DISK_HEADROOM = 1.10


def example_inputs(spec: UNetSpec, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Small, non-square example inputs: height and width must not be confused in the trace."""
    gen = torch.Generator().manual_seed(0)
    h, w = 2 * spec.downsample, 3 * spec.downsample
    x = torch.randn(batch, spec.in_channels, h, w, generator=gen)
    t = torch.full((batch,), 500.0)
    context = torch.randn(batch, 77, spec.context_dim, generator=gen)
    return x, t, context


def dynamic_shapes(spec: UNetSpec) -> dict[str, ov.PartialShape]:
    """Batch, height, width and context length free; channels fixed."""
    return {
        "x": ov.PartialShape([-1, spec.in_channels, -1, -1]),
        "timesteps": ov.PartialShape([-1]),
        "context": ov.PartialShape([-1, -1, spec.context_dim]),
    }


def convert_unet(unet: torch.nn.Module, spec: UNetSpec, progress: ProgressFn = silent) -> ov.Model:
    """Trace the UNet with OpenVINO's own converter and name its inputs and output."""
    progress("tracing the torch UNet", 0.0)
    example = example_inputs(spec)
    with torch.no_grad(), traceable(unet), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about ldm's shape asserts: harmless here
        model = ov.convert_model(unet, example_input=example)
    if len(model.inputs) != len(INPUT_NAMES):
        raise ExportError(f"the converted UNet has {len(model.inputs)} inputs, expected 3")
    for port, name in zip(model.inputs, INPUT_NAMES, strict=True):
        port.get_tensor().set_names({name})
    model.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    model.reshape(dynamic_shapes(spec))
    progress("converted", 1.0)
    return model


def check_disk_space(folder: Path, needed_bytes: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed_bytes * DISK_HEADROOM:
        raise ExportError(
            f"not enough disk space in {folder}: the OpenVINO UNet needs about "
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
    try:
        ov.save_model(model, str(folder / IR_NAME), compress_to_fp16=False)
    except Exception as err:  # a full disk surfaces here as a RuntimeError from OpenVINO
        raise ExportError(f"saving the OpenVINO IR into {folder} failed: {err}") from err
    finally:
        del model
    progress("saved", 1.0)
    return {"convert_s": converted - started, "save_s": time.perf_counter() - converted}
