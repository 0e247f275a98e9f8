"""DeepCache on the OpenVINO UNet: UNet seconds per picture, and what caching costs in fidelity.

Question it answers: for an SD1.5-sized UNet at 512², batch 2 (cond + uncond), 20 Euler steps
run through the real schedule, how much UNet time per picture does DeepCache save at each
interval and schedule, and how far does the final latent move from the same picture made
without caching? The UNet has seeded random weights: the fidelity figures compare the same
weights with and without caching, they say nothing about picture quality.

Run by hand (never by the tests); the full run takes about 15 minutes on 2 cores:

    python bench/deepcache.py                                        # sd15, 512², 20 steps
    python bench/deepcache.py --config tiny --size 256 --steps 6     # smoke test, seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path

import openvino as ov
import torch

from sd_ov.graphs.deepcache import SCHEDULES, DeepCacheConfig
from sd_ov.graphs.ldm_unet import build_unet, describe, load_config
from sd_ov.optimize import metrics
from sd_ov.optimize.sampling import latent_to_image, sample_euler
from sd_ov.runtime.ov_core import ISA_ENV, get_core
from sd_ov.serve import engine
from sd_ov.store.recipe import Recipe


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="sd15")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--intervals", type=int, nargs="+", default=[2, 3, 5])
    parser.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=SCHEDULES)
    parser.add_argument("--branch", type=int, default=0)
    parser.add_argument("--cache", default=None, help="cache folder (default: a temporary one)")
    parser.add_argument("--json", default=None, help="write the raw numbers here")
    args = parser.parse_args(argv)

    get_core()  # the ISA guard runs before anything is timed
    unet = build_unet(load_config(args.config), seed=0)
    spec = describe(unet)
    cache_dir = Path(args.cache or tempfile.mkdtemp(prefix="sd_ov_deepcache_"))
    started = time.perf_counter()
    prepared = engine.prepare_entry(
        unet,
        cache_dir,
        f"bench-{args.config}",
        engine.weights_hash(unet),
        Recipe().with_deepcache(args.branch),
    )
    export_s = time.perf_counter() - started
    del unet  # only OpenVINO runs from here on
    gc.collect()
    runner = engine.open_deepcache(prepared.entry, DeepCacheConfig(0, args.branch))

    gen = torch.Generator().manual_seed(1)
    cond = torch.randn(1, 77, spec.context_dim, generator=gen)
    uncond = torch.randn(1, 77, spec.context_dim, generator=gen) * 0.5
    noise = torch.randn(1, spec.in_channels, args.size // 8, args.size // 8, generator=gen)

    unet_seconds = [0.0]

    def timed(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        begun = time.perf_counter()
        out = runner(x, t, c)
        unet_seconds[0] += time.perf_counter() - begun
        return out

    # Compile both models before anything is timed.
    runner.start(DeepCacheConfig(2, args.branch))
    x = torch.randn(2, spec.in_channels, args.size // 8, args.size // 8)
    compile_started = time.perf_counter()
    for _ in range(2):
        runner(x, torch.full((2,), 500.0), torch.cat([cond, uncond]))
    compile_s = time.perf_counter() - compile_started

    def picture(config: DeepCacheConfig) -> dict:
        runner.start(config, expected_calls=args.steps)
        unet_seconds[0] = 0.0
        result = sample_euler(timed, noise, cond, uncond, steps=args.steps)
        return {"latent": result.latent, "unet_s": unet_seconds[0], "pattern": "".join(runner.pattern)}

    baseline = picture(DeepCacheConfig(0, args.branch))
    base_image = latent_to_image(baseline["latent"][0])
    rows = [
        {
            "run": "no caching",
            **{k: v for k, v in baseline.items() if k != "latent"},
            "speedup": 1.0,
            "rel_l2": 0.0,
            "psnr": float("inf"),
        }
    ]
    for schedule in args.schedules:
        for interval in args.intervals:
            config = DeepCacheConfig(interval, args.branch, schedule)
            run = picture(config)
            rows.append(
                {
                    "run": f"interval {interval}, {schedule}",
                    "unet_s": run["unet_s"],
                    "pattern": run["pattern"],
                    "speedup": baseline["unet_s"] / run["unet_s"],
                    "rel_l2": metrics.rel_l2(run["latent"], baseline["latent"]),
                    "psnr": metrics.psnr(latent_to_image(run["latent"][0]), base_image),
                }
            )

    print(
        f"Machine: {cpu_name()}, {os.cpu_count()} CPUs; torch {torch.__version__}, "
        f"OpenVINO {ov.__version__}, {ISA_ENV}={os.environ.get(ISA_ENV, '')}"
    )
    print(f"Command: python {shlex.join(['bench/deepcache.py', *sys.argv[1:]])}")
    print(
        f"UNet {args.config} ({spec.parameters / 1e6:.0f} M parameters, random weights), {args.size}², "
        f"batch 2 (cond+uncond), {args.steps} Euler steps, DeepCache branch {args.branch}, "
        "OpenVINO FP32 static on CPU"
    )
    print(
        f"Export (full + shallow IR): {export_s:.1f} s{'' if prepared.exported else ' (from cache)'}; "
        f"first full + shallow call (compiles): {compile_s:.1f} s"
    )
    print()
    print(
        "| run | UNet s / picture | speed-up | full/shallow calls | final latent rel L2 | preview PSNR dB |"
    )
    print("|---|---:|---:|---|---:|---:|")
    for r in rows:
        calls = f"{r['pattern'].count('F')}/{r['pattern'].count('S')}"
        print(
            f"| {r['run']} | {r['unet_s']:.1f} | {r['speedup']:.2f}x | {calls} | {r['rel_l2']:.3f} | "
            f"{r['psnr']:.1f} |"
        )
    print(f"\nPeak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "export_s": export_s, "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
