"""INT8 compression of an exported UNet IR with NNCF.

- "weights": every MatMul and Convolution weight to INT8 (`nncf.compress_weights`); activations
  stay float. Smaller on disk and in memory; on CPUs the arithmetic stays FP32.
- "hybrid": the split optimum-intel uses for diffusion models, refined. MatMul weights (attention
  and feed-forward, where CLIP-like outlier channels in the text embeddings make activation
  quantization lose the picture) are INT8 weight-only. Convolutions that read a normalized
  activation (GroupNorm → SiLU → conv in every ResBlock, GroupNorm → proj_in) are quantized
  fully (INT8 weights and activations) from calibration samples. Convolutions that read the raw
  residual stream (conv_in, skip connections, down/upsamplers, proj_out, the output conv) have
  wide, outlier-heavy inputs and stay FP32: on an SD1.5-sized UNet this took the relative
  L2 error from 0.135 to 0.049 (256², 8 samples), at a small cost in speed (see bench/recipes.py).
- "hybrid-ff": hybrid, and the feed-forward MatMuls (they read a LayerNorm's output, or GEGLU's;
  not the text context) quantized fully too. Measured on an SD1.5-sized UNet with random weights
  (bench/int8_matmuls.py, AMD EPYC Zen 4, bf16 float parts, batch-2 64x64 call): 3.63-3.96 s
  against hybrid's 4.36-4.45 s, rel L2 0.060 against 0.059. Random weights lack the activation
  outliers real checkpoints have, so it is a mode of its own and "hybrid" stays the form's
  default; the `fastest` preset takes it (in the real webui 14 % off the preset's UNet seconds
  at the same PSNR, preset.py), and Optimize's report measures it on the user's checkpoint.
- "full": everything quantized from the calibration samples (`nncf.quantize`, transformer
  preset), SmoothQuant optional.

Compression always reads the FP32 IR from disk (memory-mapped) rather than a model held in
memory, so the torch weights and the converted graph are not alive at the same time.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import openvino as ov

from ..constants import INT8_MODES
from ..graphs.export import check_disk_space, save_ir
from ..graphs.ldm_unet import Sample
from ..store import fs
from .memory import mapped_file_released
from .ov_core import get_core

# Convolutions whose input is the un-normalized residual stream (ldm UNet module names).
# (DeepCache's graphs trace the UNet as a submodule: `__module.unet.out.2`.)
RAW_INPUT_CONVS = re.compile(
    r"input_blocks\.0\.0/|skip_connection|\.op/|\.conv/|proj_out|__module\.(?:unet\.)?out\."
)


# The feed-forward MatMuls of every transformer block (ldm's and sgm's `ff.net.0.proj`, `ff.net.2`).
FEED_FORWARD = re.compile(r"\.ff\.net\.")


def raw_input_convolutions(model: ov.Model) -> list[str]:
    """Convolutions the hybrid recipe keeps in FP32 (see the module's docstring)."""
    return [
        op.get_friendly_name()
        for op in model.get_ops()
        if op.get_type_name() == "Convolution" and RAW_INPUT_CONVS.search(op.get_friendly_name())
    ]


def matmuls_with_weights(model: ov.Model) -> list[str]:
    """Names of MatMul operations with a constant (weight) input, behind any decompression."""

    def constant_behind(node: ov.Node) -> bool:
        for _ in range(6):  # Constant → Convert → Subtract → Multiply (→ Convert): NNCF's decompression
            if node.get_type_name() == "Constant":
                return True
            if node.get_input_size() == 0:
                return False
            node = node.input_value(0).get_node()
        return False

    names = []
    for op in model.get_ops():
        if op.get_type_name() == "MatMul" and any(
            constant_behind(op.input_value(i).get_node()) for i in range(2)
        ):
            names.append(op.get_friendly_name())
    return names


WEIGHT_CONSUMERS = ("MatMul", "Convolution")
# What NNCF leaves float beside the INT8 weights (layers it skips, activation ranges): an SD1.5
# INT8 hybrid + ToMe IR measured 1.31x the one-byte-per-weight count (1.05 GiB against 0.80)
INT8_IR_OVERHEAD = 1.35


def int8_ir_bytes(model: ov.Model) -> int:
    """The size of `model`'s IR once INT8: each float weight of a MatMul or Convolution at one byte
    per value plus an f32 scale per output channel (NNCF's per-channel INT8), every other constant
    as it is, times what NNCF keeps float (`INT8_IR_OVERHEAD`). Counted from the graph: the
    source's size as a guess asked 4x too much room for SDXL's pair."""
    total = 0
    for node in model.get_ops():
        if node.get_type_name() != "Constant":
            continue
        shape = list(node.get_output_shape(0))
        consumers = {t.get_node().get_type_name() for t in node.output(0).get_target_inputs()}
        if node.get_element_type().is_real() and len(shape) >= 2 and consumers & set(WEIGHT_CONSUMERS):
            count = 1
            for dim in shape:
                count *= int(dim)
            total += count + 4 * int(shape[0])
        else:
            total += int(node.get_byte_size())
    return int(total * INT8_IR_OVERHEAD)


def _nncf():
    import logging

    import nncf

    nncf.set_log_level(logging.WARNING)  # its per-layer INFO lines would flood the webui console
    return nncf


def compress_weights_int8(
    model: ov.Model, ignored_types: Sequence[str] = (), ignored_names: Sequence[str] = ()
) -> ov.Model:
    nncf = _nncf()
    kwargs: dict[str, Any] = {"mode": nncf.CompressWeightsMode.INT8_ASYM}
    if ignored_types or ignored_names:
        kwargs["ignored_scope"] = nncf.IgnoredScope(
            types=list(ignored_types), names=list(ignored_names), validate=False
        )
    return nncf.compress_weights(model, **kwargs)


def _quantize(
    model: ov.Model, samples: Sequence[Sample], ignored_names: Sequence[str], smooth_quant: bool
) -> ov.Model:
    nncf = _nncf()
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    alpha = 0.15 if smooth_quant else -1  # -1 turns SmoothQuant off
    advanced = AdvancedQuantizationParameters(
        smooth_quant_alphas=AdvancedSmoothQuantParameters(convolution=-1, matmul=alpha)
    )
    kwargs: dict[str, Any] = {}
    if ignored_names:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=list(ignored_names), validate=False)
    return nncf.quantize(
        model,
        nncf.Dataset(list(samples)),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(samples),
        advanced_parameters=advanced,
        **kwargs,
    )


def compress_ir(
    source: Path,
    target: Path,
    mode: str,
    samples: Sequence[Sample] = (),
    smooth_quant: bool = False,
    calibrated_on: Callable[[Path], None] | None = None,
) -> None:
    """Compress the IR at `source` by `mode` (one of INT8_MODES) and save it at `target`.

    `calibrated_on(ir)` is told the IR whose activations NNCF's statistics came from (the source,
    or hybrid's weight-compressed stage) while it still exists: DeepCache's shallow model is
    calibrated on the features that graph computes, so its quantizers match the full model's.

    Works from files so that peak memory stays low beside the torch UNet: the FP32 IR is read
    memory-mapped (its pages given back as they are read), and "hybrid" saves its
    weight-compressed stage and quantizes that smaller IR read back from disk, so the FP32
    weights are unmapped before NNCF compiles its statistics model. For SD1.5 this took the
    Optimize peak from 11.0 GB down (README, Measured).
    """
    if mode not in INT8_MODES or mode == "off":
        raise ValueError(f"INT8 mode must be one of {INT8_MODES[1:]}, not {mode!r}")
    if mode != "weights" and not samples:
        raise ValueError(f"INT8 mode {mode!r} needs calibration samples")
    core = get_core()
    with mapped_file_released(source.with_suffix(".bin")):  # NNCF reads each weight once
        model = core.read_model(str(source))
        # hybrid writes a stage and the target: refused before NNCF's statistics (minutes), not
        # when the disk fills in the middle (a real Optimize did); sized from what is written
        check_disk_space(target.parent, int8_ir_bytes(model) * (1 if mode in ("weights", "full") else 2))
        if mode == "weights":
            save_ir(compress_weights_int8(model), target)
            return
        if mode == "full":
            save_ir(_quantize(model, samples, (), smooth_quant), target)
            if calibrated_on is not None:
                calibrated_on(source)
            return
        matmuls = matmuls_with_weights(model)
        # hybrid-ff's feed-forward MatMuls keep float weights here: `nncf.quantize` makes them W8A8
        w8a8 = [n for n in matmuls if FEED_FORWARD.search(n)] if mode == "hybrid-ff" else []
        weight_only = [n for n in matmuls if n not in w8a8] + raw_input_convolutions(model)
        stage = target.with_name(f"{target.stem}.weights-int8.xml")
        save_ir(compress_weights_int8(model, ignored_types=("Convolution",), ignored_names=w8a8), stage)
        del model
        gc.collect()
    try:
        with mapped_file_released(stage.with_suffix(".bin")):
            save_ir(_quantize(core.read_model(str(stage)), samples, weight_only, smooth_quant), target)
        if calibrated_on is not None:
            calibrated_on(stage)
    finally:
        gc.collect()
        for path in (stage, stage.with_suffix(".bin")):
            fs.remove_file(path)
