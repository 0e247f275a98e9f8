"""Compression recipes side by side: torch, FP32, INT8, token merging, pruning, combinations.

Question it answers: on this CPU, at 512² and batch 2, which recipe buys speed over torch and
OpenVINO FP32, and what does it cost in fidelity (relative L2 of the UNet output against torch
on the same weights and inputs)? The UNet has seeded random weights and the calibration prompts
are random text embeddings run through the real sampler: fidelity here is to torch on the same
weights, not picture quality.

Every recipe goes through `sd_ov.optimize.run.optimize` (what the webui's Optimize button runs),
with one set of calibration samples captured up front with the FP32 OpenVINO UNet at
--calib-size. Each recipe's compiled model is freed before the next is compiled. Run by hand
(about 40 minutes for sd15 on 2 cores):

    python bench/recipes.py                                           # sd15, 512², all recipes
    python bench/recipes.py --config tiny --size 256 --calls 2        # smoke test
    python bench/recipes.py --recipes fp32 int8 int8+tome0.5          # a subset
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import openvino as ov
import torch

from sd_ov.graphs.ldm_unet import build_unet, describe, load_config
from sd_ov.graphs.traceable_unet import traceable
from sd_ov.optimize import metrics
from sd_ov.optimize.calibration import random_prompt_capture
from sd_ov.optimize.measure import median_call
from sd_ov.optimize.run import optimize
from sd_ov.runtime.memory import peak_rss_mib
from sd_ov.runtime.ov_core import ISA_ENV, get_core
from sd_ov.serve import engine
from sd_ov.store import cache
from sd_ov.store.recipe import Recipe

RECIPES = {
    "fp32": Recipe(),
    "int8w": Recipe(int8="weights"),
    "int8": Recipe(int8="hybrid"),
    "int8full": Recipe(int8="full"),
    "tome0.3": Recipe(tome=0.3),
    "tome0.5": Recipe(tome=0.5),
    "ffn20": Recipe(prune="ffn", prune_ratio=0.2),
    "ffn40": Recipe(prune="ffn", prune_ratio=0.4),
    "mag40": Recipe(prune="magnitude", prune_ratio=0.4),
    "int8+tome0.5": Recipe(int8="hybrid", tome=0.5),
    "int8+tome0.5+ffn20": Recipe(int8="hybrid", tome=0.5, prune="ffn", prune_ratio=0.2),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="sd15")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--calib-size", type=int, default=256)
    parser.add_argument("--calib-prompts", type=int, default=4)
    parser.add_argument("--calib-steps", type=int, default=8)
    parser.add_argument("--samples", type=int, default=16, help="calibration samples per recipe")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per runtime (median)")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--cache", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--keep", action="store_true", help="keep each recipe's entry (1-4 GB each)")
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
        torch_s, reference = median_call(unet, inputs, args.calls)
    rows = [dict(recipe="torch", s=torch_s, ratio=1.0, rel_l2=0.0, disk=None, opt=None, rss=peak_rss_mib())]

    # One capture for all recipes: the FP32 OpenVINO UNet in the sampler loop.
    fp32 = engine.prepare_entry(unet, cache_dir, name, key).entry
    capture_fn = random_prompt_capture(
        spec, args.calib_prompts, args.calib_steps, (args.calib_size, args.calib_size), seed=5
    )
    runtime = engine.open_unet(fp32)
    captured = capture_fn(runtime)
    runtime.release()
    del runtime

    for label in args.recipes:
        recipe = Recipe(**{**RECIPES[label].__dict__, "samples": args.samples})
        gc.collect()
        started = time.perf_counter()
        entry = optimize(unet, cache_dir, name, key, recipe, lambda _unet, _progress: captured, measure=None)
        optimize_s = time.perf_counter() - started
        if recipe.is_plain:
            optimize_s = sum(fp32.manifest.timings.values())
        runtime = engine.open_unet(entry, precision=recipe.precision)
        s, out = median_call(runtime, inputs, args.calls)
        rows.append(
            dict(
                recipe=recipe.label() if not recipe.is_plain else "OpenVINO FP32",
                s=s,
                ratio=torch_s / s,
                rel_l2=metrics.rel_l2(out, reference),
                disk=entry.manifest.disk_bytes / 2**20,
                opt=optimize_s,
                rss=peak_rss_mib(),
            )
        )
        runtime.release()
        del runtime
        if not recipe.is_plain and not args.keep:
            cache.delete(entry.path)  # IR and compiled blobs: the whole run would need ~45 GB
        print(json.dumps(rows[-1]), flush=True)

    print(
        f"Machine: {os.cpu_count()} CPUs; torch {torch.__version__}, OpenVINO {ov.__version__}, "
        f"{ISA_ENV}={os.environ.get(ISA_ENV, '')}"
    )
    print(f"Command: python {shlex.join(['bench/recipes.py', *sys.argv[1:]])}")
    print(
        f"UNet {args.config} ({spec.parameters / 1e6:.0f} M parameters, random weights), {args.size}², "
        f"batch 2, 77 tokens; median of {args.calls} calls after a warm-up; {args.samples} calibration "
        f"samples from {len(captured)} sampler calls at {args.calib_size}²"
    )
    print()
    print(
        "| recipe | s/step | torch ÷ this | rel L2 vs torch | disk MiB | optimize s | peak RSS MiB so far |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        disk = "—" if r["disk"] is None else f"{r['disk']:.0f}"
        opt = "—" if r["opt"] is None else f"{r['opt']:.0f}"
        print(
            f"| {r['recipe']} | {r['s']:.2f} | {r['ratio']:.2f} | {r['rel_l2']:.3g} | {disk} | {opt} | "
            f"{r['rss']:.0f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
