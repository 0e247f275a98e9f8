"""Which MatMuls can INT8 hybrid quantize fully (weights and activations) as well: SD1.5-sized UNet
with seeded random weights, one batch-2 call at 64x64 latents with the float parts at bf16 (as the
`fastest` preset runs), seconds (median of 3 after a warm-up) and relative L2 against torch.

Question (issue #24): hybrid keeps every MatMul weight-only (optimum-intel's split, because of
activation outliers); a profile of the fastest recipe's full call put 1.0 s of its 3.2 s in those
MatMuls (weights decompressed to bf16). How much do W8A8 feed-forward MatMuls (they read a
LayerNorm's output, or GEGLU's) or all MatMuls with weights buy, and at what fidelity?

Variants, all from one FP32 export and one set of calibration samples (2 prompts x 4 Euler steps
at 256², 8 samples): hybrid; ff (both feed-forward MatMuls W8A8); ff0 (the first only); all (every
MatMul with a weight); ff+up (ff, and the upsamplers' convolutions quantized too).
Random weights: fidelity to torch on the same weights, not picture quality; real checkpoints
have the activation outliers that random ones lack, so a variant must be checked on one.

    python bench/int8_matmuls.py --work /tmp/int8-matmuls    # about 15 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

import openvino as ov
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sd_ov.graphs.export import export_unet, save_ir  # noqa: E402
from sd_ov.graphs.ldm_unet import build_unet, describe, load_config  # noqa: E402
from sd_ov.graphs.traceable_unet import traceable  # noqa: E402
from sd_ov.optimize import metrics  # noqa: E402
from sd_ov.optimize.calibration import random_prompt_capture  # noqa: E402
from sd_ov.runtime.compress import _nncf, _quantize, matmuls_with_weights, raw_input_convolutions  # noqa: E402
from sd_ov.runtime.unet import OVUNet  # noqa: E402

NOTHING = re.compile(r"(?!)")
VARIANTS = {  # name: (MatMuls made W8A8, raw-input convolutions quantized)
    "hybrid": (NOTHING, NOTHING),
    "ff": (re.compile(r"ff\.net"), NOTHING),
    "ff0": (re.compile(r"ff\.net\.0"), NOTHING),
    "all": (re.compile(r"."), NOTHING),
    "ff+up": (re.compile(r"ff\.net"), re.compile(r"output_blocks\.\d+\.\d+\.conv")),
}


def variant(fp32: Path, out: Path, samples, matmuls: re.Pattern, convs: re.Pattern) -> Path:
    """Hybrid's two stages with the chosen MatMuls and convolutions left to `nncf.quantize`."""
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    nncf = _nncf()
    model = ov.Core().read_model(str(fp32))
    all_matmuls, raw = matmuls_with_weights(model), raw_input_convolutions(model)
    w8a8 = [n for n in all_matmuls if matmuls.search(n)]
    freed = [n for n in raw if convs.search(n)]
    stage = nncf.compress_weights(
        model,
        mode=nncf.CompressWeightsMode.INT8_ASYM,
        ignored_scope=nncf.IgnoredScope(types=["Convolution"], names=w8a8, validate=False),
    )
    weight_only = [n for n in all_matmuls if n not in w8a8] + [n for n in raw if n not in freed]
    save_ir(_quantize(stage, samples, weight_only, False), out)
    print(
        f"{out.parent.name}: {len(w8a8)} of {len(all_matmuls)} MatMuls W8A8, {len(freed)} convolutions freed"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/int8-matmuls"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    unet = build_unet(load_config("sd15"), seed=0)
    spec = describe(unet).exported(tome=False)
    fp32 = args.work / "fp32" / "unet.xml"
    if not fp32.exists():
        fp32.parent.mkdir(parents=True, exist_ok=True)
        export_unet(unet, spec, fp32.parent)
    samples = random_prompt_capture(spec, prompts=2, steps=4, size=(256, 256))(
        OVUNet(fp32), lambda m, f: None
    )
    gen = torch.Generator().manual_seed(5)
    inputs = (
        torch.randn(2, 4, 64, 64, generator=gen),
        torch.tensor([500.0, 500.0]),
        torch.randn(2, 77, 768, generator=gen),
    )
    with torch.no_grad(), traceable(unet):
        reference = unet(*inputs)
    print("| variant | s per call | rel L2 vs torch |\n|---|---:|---:|")
    for name, (matmuls, convs) in VARIANTS.items():
        runtime = OVUNet(
            variant(fp32, args.work / name / "unet.xml", samples, matmuls, convs), precision="bf16"
        )
        out = runtime(*inputs)
        times = []
        for _ in range(3):
            started = time.perf_counter()
            runtime(*inputs)
            times.append(time.perf_counter() - started)
        print(
            f"| {name} | {statistics.median(times):.2f} | {metrics.rel_l2(out, reference):.4f} |", flush=True
        )
        runtime.release()


if __name__ == "__main__":
    main()
