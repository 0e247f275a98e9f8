"""Compression recipes side by side: torch, OpenVINO FP32, INT8 weights-only, INT8 hybrid.

Question it answers: on this CPU, at 512² and batch 2, which INT8 recipe buys speed over FP32,
and what does it cost in fidelity (relative L2 of the UNet output against torch on the same
weights and inputs)? The UNet has seeded random weights and the calibration prompts are random
text embeddings run through the real sampler: fidelity here is to torch on the same weights.

Calibration samples are captured at --calib-size with the FP32 OpenVINO UNet in the sampler loop
(cheap), then the recipes are timed at --size. Each recipe's compiled model is freed before the
next one is compiled. Run by hand (about 15 minutes for sd15):

    python bench/recipes.py                                          # sd15, 512², hybrid on 8 samples
    python bench/recipes.py --config tiny --size 256 --calib-size 256 --steps 2   # smoke test
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import openvino as ov
import torch

from sd_ov import engine, metrics
from sd_ov.calibration import CapturingUNet, spread
from sd_ov.ldm_unet import build_unet, describe, load_config, traceable
from sd_ov.ov_core import ISA_ENV, get_core
from sd_ov.sampling import sample_euler


def rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_calls(fn, inputs, warmup: int, steps: int) -> tuple[float, torch.Tensor]:
    out = None
    times = []
    for i in range(warmup + steps):
        started = time.perf_counter()
        out = fn(*inputs)
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="sd15")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--calib-size", type=int, default=256)
    parser.add_argument("--calib-samples", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed calls per runtime (median)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--recipes", nargs="+", default=["fp32", "weights", "hybrid"])
    parser.add_argument("--cache", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    get_core()
    unet = build_unet(load_config(args.config), seed=0)
    spec = describe(unet)
    cache_dir = Path(args.cache or tempfile.mkdtemp(prefix="sd_ov_recipes_"))
    key = engine.weights_hash(unet)
    name = f"bench-{args.config}"

    gen = torch.Generator().manual_seed(3)
    latent = args.size // 8
    inputs = (
        torch.randn(2, spec.in_channels, latent, latent, generator=gen),
        torch.full((2,), 500.0),
        torch.randn(2, 77, spec.context_dim, generator=gen),
    )
    with torch.no_grad(), traceable(unet):  # torch at its fastest (SDPA attention)
        torch_s, reference = time_calls(unet, inputs, args.warmup, args.steps)
    rows = [
        {
            "recipe": "torch",
            "s_per_step": torch_s,
            "ratio": 1.0,
            "rel_l2": 0.0,
            "disk_mib": None,
            "optimize_s": None,
            "peak_rss_mib": rss_peak_mib(),
        }
    ]

    fp32 = engine.prepare_entry(unet, cache_dir, name, key).entry
    samples: list = []
    if "hybrid" in args.recipes or "full" in args.recipes:
        runtime = engine.open_unet(fp32)
        capture = CapturingUNet(runtime)
        calib_latent = args.calib_size // 8
        prompts = max(1, args.calib_samples // 4)
        for _ in range(prompts):
            cond = torch.randn(1, 77, spec.context_dim, generator=gen)
            uncond = torch.randn(1, 77, spec.context_dim, generator=gen) * 0.5
            noise = torch.randn(1, spec.in_channels, calib_latent, calib_latent, generator=gen)
            sample_euler(capture, noise, cond, uncond, steps=max(4, args.calib_samples // prompts))
        samples = spread(capture.samples, args.calib_samples)
        runtime.release()

    for recipe_name in args.recipes:
        gc.collect()
        started = time.perf_counter()
        if recipe_name == "fp32":
            entry = fp32
            optimize_s = sum(fp32.manifest["timings"].values())
        else:
            recipe = engine.int8_recipe(recipe_name, samples if recipe_name != "weights" else ())
            calibration = samples if recipe_name != "weights" else ()
            entry = engine.prepare_entry(unet, cache_dir, name, key, recipe, calibration=calibration).entry
            optimize_s = time.perf_counter() - started
        runtime = engine.open_unet(entry)
        s, out = time_calls(runtime, inputs, args.warmup, args.steps)
        rows.append(
            {
                "recipe": entry.manifest["recipe"]["name"] if recipe_name != "fp32" else "OpenVINO fp32",
                "s_per_step": s,
                "ratio": torch_s / s,
                "rel_l2": metrics.rel_l2(out, reference),
                "disk_mib": entry.manifest["disk_bytes"] / 2**20,
                "optimize_s": optimize_s,
                "peak_rss_mib": rss_peak_mib(),
            }
        )
        runtime.release()
        del runtime

    print(
        f"Machine: {os.cpu_count()} CPUs; torch {torch.__version__}, OpenVINO {ov.__version__}, "
        f"{ISA_ENV}={os.environ.get(ISA_ENV, '')}"
    )
    print(f"Command: python {shlex.join(['bench/recipes.py', *sys.argv[1:]])}")
    print(
        f"UNet {args.config} ({spec.parameters / 1e6:.0f} M parameters, random weights), {args.size}², "
        f"batch 2, 77 tokens; median of {args.steps} calls after {args.warmup} warm-up; "
        f"{len(samples)} calibration samples captured at {args.calib_size}²"
    )
    print()
    print(
        "| recipe | s/step | torch ÷ this | rel L2 vs torch | disk MiB | optimize s | peak RSS MiB so far |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        disk = "—" if r["disk_mib"] is None else f"{r['disk_mib']:.0f}"
        opt = "—" if r["optimize_s"] is None else f"{r['optimize_s']:.0f}"
        print(
            f"| {r['recipe']} | {r['s_per_step']:.2f} | {r['ratio']:.2f} | {r['rel_l2']:.3g} | {disk} | "
            f"{opt} | {r['peak_rss_mib']:.0f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
