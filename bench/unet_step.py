"""UNet step time, torch eager vs OpenVINO FP32 (static and dynamic shapes), side by side in one run.

Question it answers: on this CPU, how many seconds does one sampling step of an SD1.5-sized UNet
(batch 2 = cond + uncond, 77 context tokens) take with torch and with sd-ov's OpenVINO UNet under
each shape policy, what does each compile cost, what does the export cost, how far is OpenVINO's
output from torch's, and how much memory does it all take? The UNet has seeded random weights
(`build_unet(config, seed=0)`): speed and fidelity to torch on the same weights, not picture quality.

Fairness: for each size both OpenVINO models are compiled first, then the three runtimes are
called round-robin (torch, static, dynamic), the first runtime of each round rotating, so a
noisy neighbour on a shared CPU slows all three alike. s/step is the median of --steps calls
after --warmup calls; every runtime gets the same inputs. Threads are left at their defaults.

Run by hand (never by the tests); a full sd15 run takes about 10 minutes on 2 cores:

    python bench/unet_step.py                                   # sd15, 256 and 512
    python bench/unet_step.py --config tiny --sizes 256 --steps 3   # smoke test, seconds
    python bench/unet_step.py --sizes 512 --cache /tmp/c --json out/unet_step.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import openvino as ov
import psutil
import torch

from sd_ov.graphs.ldm_unet import build_unet, describe, load_config
from sd_ov.graphs.traceable_unet import traceable
from sd_ov.optimize import metrics
from sd_ov.runtime.memory import peak_rss_mib
from sd_ov.runtime.ov_core import ISA_ENV, get_core
from sd_ov.runtime.unet import OVUNet
from sd_ov.serve import engine

BATCH = 2  # cond + uncond
TOKENS = 77
TIMESTEP = 500.0
UNetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Row:
    size: int
    runtime: str  # torch, ov-static, ov-dynamic
    s_per_step: float = 0.0
    first_call_s: float = 0.0  # includes lazy per-shape work (dynamic shapes: first inference)
    compile_s: float | None = None  # None: nothing compiled at this size (dynamic after the first)
    ratio: float = 1.0  # torch s/step ÷ this s/step
    rel_l2: float | None = None  # vs torch on the same inputs
    times_s: list[float] = field(default_factory=list)


def machine_info() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "openvino": ov.__version__,
        "torch_threads": torch.get_num_threads(),
        # The engine's ISA guard runs in get_core(); unset means "no cap".
        "onednn_max_cpu_isa": os.environ.get(ISA_ENV),
    }


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="sd15", help="UNet config: sd15, sd2, tiny or a JSON path")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="picture sizes (square)")
    p.add_argument("--steps", type=int, default=5, help="timed UNet calls per runtime (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed UNet calls per runtime first")
    p.add_argument("--cache", type=Path, help="sd-ov cache dir (kept); default: a temp dir")
    p.add_argument("--keep-cache", action="store_true", help="keep the default temp cache dir")
    p.add_argument(
        "--no-blob-cache",
        action="store_true",
        help="do not let OpenVINO cache compiled blobs (compile s is then a pure compile)",
    )
    p.add_argument(
        "--torch-sdpa",
        action="store_true",
        help="torch with the exporter's SDPA attention instead of ldm's default attention",
    )
    p.add_argument("--json", type=Path, help="write the raw numbers here")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["unet_step.py", *argv])
    get_core()  # runs the ISA guard, which sets ONEDNN_MAX_CPU_ISA if needed, before any timing
    info = machine_info()
    memory: list[tuple[str, float]] = [("start", rss_mib())]

    config = load_config(args.config)
    config_name = Path(args.config).stem if args.config.endswith(".json") else args.config
    unet = build_unet(config, seed=0)
    spec = describe(unet)
    bad = [s for s in args.sizes if s % (8 * spec.downsample)]
    if bad:
        raise SystemExit(f"sizes must be multiples of {8 * spec.downsample}: {bad}")
    memory.append(("torch UNet built", rss_mib()))

    temp_cache = args.cache is None
    cache_dir = Path(tempfile.mkdtemp(prefix="sd_ov_bench_")) if temp_cache else args.cache
    try:
        started = time.perf_counter()
        weights = engine.weights_hash(unet)
        hash_s = time.perf_counter() - started
        started = time.perf_counter()
        prepared = engine.prepare_entry(unet, cache_dir, f"bench-{config_name}", weights)
        export = {
            "hash_s": hash_s,
            "prepare_s": time.perf_counter() - started,  # conversion + save, or cache validation
            "from_cache": not prepared.exported,
            "timings": prepared.entry.manifest.timings,  # of the original export
            "entry": str(prepared.entry.path),
        }
        memory.append(("exported" if prepared.exported else "cache entry found", rss_mib()))

        blobs_before = sum(1 for p in prepared.entry.blob_dir.rglob("*") if p.is_file())
        ov_unets = {
            policy: engine.open_unet(
                prepared.entry,
                "CPU",
                "f32",
                policy,
                max_compiled=1,  # one static shape at a time: RSS of what one size needs
                cache_compiled=not args.no_blob_cache,
            )
            for policy in ("static", "dynamic")
        }
        rows = []
        with torch.no_grad(), traceable(unet) if args.torch_sdpa else contextlib.nullcontext():
            for size in args.sizes:
                rows += bench_size(unet, spec.in_channels, spec.context_dim, ov_unets, size, args, memory)
        result = {
            "command": command,
            "machine": info,
            "config": args.config,
            "parameters": spec.parameters,
            "batch": BATCH,
            "tokens": TOKENS,
            "steps": args.steps,
            "warmup": args.warmup,
            "torch_attention": "sdpa" if args.torch_sdpa else "ldm",
            "blob_cache": not args.no_blob_cache,
            "blobs_before": blobs_before,
            "export": export,
            "rows": [asdict(r) for r in rows],
            "rss_mib": dict(memory),
            "peak_rss_mib": peak_rss_mib(),
        }
    finally:
        if temp_cache and not args.keep_cache:
            shutil.rmtree(cache_dir, ignore_errors=True)
        elif temp_cache:
            print(f"cache kept in {cache_dir}", file=sys.stderr)

    print(format_report(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


def bench_size(
    unet: torch.nn.Module,
    in_channels: int,
    context_dim: int,
    ov_unets: dict[str, OVUNet],
    size: int,
    args: argparse.Namespace,
    memory: list[tuple[str, float]],
) -> list[Row]:
    latent = size // 8
    gen = torch.Generator().manual_seed(size)
    x = torch.randn(BATCH, in_channels, latent, latent, generator=gen)
    t = torch.full((BATCH,), TIMESTEP)
    context = torch.randn(BATCH, TOKENS, context_dim, generator=gen)

    runners: dict[str, UNetFn] = {"torch": unet}
    rows = {"torch": Row(size, "torch")}
    for policy, ov_unet in ov_unets.items():
        name = f"ov-{policy}"
        before = dict(ov_unet.stats.compiles)
        ov_unet.prepare(BATCH, latent, latent, TOKENS)
        new = [s for label, s in ov_unet.stats.compiles.items() if before.get(label) != s]
        rows[name] = Row(size, name, compile_s=new[0] if new else None)
        runners[name] = ov_unet
        memory.append((f"{size}: {name} compiled", rss_mib()))

    names = list(runners)
    outputs: dict[str, torch.Tensor] = {}
    for i in range(args.warmup + args.steps):
        for name in names[i % len(names) :] + names[: i % len(names)]:  # rotate who goes first
            started = time.perf_counter()
            out = runners[name](x, t, context)
            rows[name].times_s.append(time.perf_counter() - started)
            outputs.setdefault(name, out)
    memory.append((f"{size}: timed", rss_mib()))
    for ov_unet in ov_unets.values():  # the next size starts from the same memory as this one
        ov_unet.drop_compiled()
    gc.collect()

    ref = rows["torch"]
    for row in rows.values():
        row.first_call_s = row.times_s[0]
        row.s_per_step = statistics.median(row.times_s[args.warmup :])
    for name, row in rows.items():
        row.ratio = ref.s_per_step / row.s_per_step
        if name != "torch":
            row.rel_l2 = metrics.rel_l2(outputs[name], outputs["torch"])
    return list(rows.values())


def format_report(r: dict[str, Any]) -> str:
    m, e = r["machine"], r["export"]
    isa = m["onednn_max_cpu_isa"] or "unset (no cap)"
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in e["timings"].items())
    export = f"from cache (its export took {timings})" if e["from_cache"] else f"exported ({timings})"
    lines = [
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs ({m['physical_cores']} cores, "
        f"{m['usable_cpus']} usable), {m['ram_gib']} GiB RAM; torch {m['torch']} ({m['torch_threads']} "
        f"threads), OpenVINO {m['openvino']}, {ISA_ENV}={isa}",
        f"Command: {r['command']}",
        f"UNet {r['config']} ({r['parameters'] / 1e6:.0f} M parameters, random weights), batch {r['batch']}, "
        f"{r['tokens']} tokens; median of {r['steps']} calls after {r['warmup']} warm-up; "
        "runtimes called round-robin (torch, ov-static, ov-dynamic), first one rotating each round",
        f"torch attention: {r['torch_attention']}; OpenVINO FP32 on CPU, compiled-blob cache "
        f"{'on' if r['blob_cache'] else 'off'} ({r['blobs_before']} blobs there before)",
        f"Export: prepare_entry {e['prepare_s']:.1f} s, {export}; weights hash {e['hash_s']:.1f} s",
        "",
        "| size | latent | runtime | s/step | torch ÷ this | compile s | 1st call s | rel L2 vs torch |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        compile_s = "—" if row["compile_s"] is None else f"{row['compile_s']:.2f}"
        rel = "—" if row["rel_l2"] is None else f"{row['rel_l2']:.2e}"
        lines.append(
            f"| {row['size']} | {row['size'] // 8} | {row['runtime']} | {row['s_per_step']:.3f} | "
            f"{row['ratio']:.2f} | {compile_s} | {row['first_call_s']:.3f} | {rel} |"
        )
    lines += [
        "",
        "RSS MiB: " + ", ".join(f"{k} {v:.0f}" for k, v in r["rss_mib"].items()),
        f"Peak RSS: {r['peak_rss_mib']:.0f} MiB",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
