"""SDXL-sized UNet: export's peak memory and time, and one step torch vs OpenVINO FP32.

Question it answers: can a 24 GB machine export SDXL's UNet (sgm UNetModel, 2.6 G parameters,
10.3 GB in FP32) and serve it, how much memory does each phase take, and how many seconds is one
sampling step (batch 2 = cond + uncond, 77 tokens, the vector conditioning y) with torch and with
sd-ov's OpenVINO UNet? Seeded random weights (speed and memory don't depend on the values;
fidelity is to torch on the same weights, not picture quality).

Phases run one after another in one process, each with its peak resident memory (VmHWM, reset
through /proc/self/clear_refs before the phase): build the torch UNet; torch steps; export
(`engine.prepare_entry`: trace, convert, save); the torch UNet freed; OpenVINO compile and steps.
The torch and OpenVINO steps can't be interleaved here (both at once would not fit): run nothing
else meanwhile. s/step is the median of --steps calls after one warm-up call.

sgm ships with the webui (repositories/generative-models), not on PyPI. Run by hand, e.g.:

    PYTHONPATH=<webui>/repositories/generative-models:<webui>/repositories/stable-diffusion-stability-ai \
        <webui>/venv/bin/python bench/sdxl.py --size 1024 --steps 2 --cache /tmp/sdxl-cache
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sd_ov import engine, metrics  # noqa: E402
from sd_ov.ldm_unet import describe, randomize_zero_init  # noqa: E402
from sd_ov.memory import trim_heap  # noqa: E402

# generative-models' configs/inference/sd_xl_base.yaml, network_config (attention as SDPA)
SDXL_BASE = dict(
    adm_in_channels=2816,
    num_classes="sequential",
    use_checkpoint=False,
    in_channels=4,
    out_channels=4,
    model_channels=320,
    attention_resolutions=[4, 2],
    num_res_blocks=2,
    channel_mult=[1, 2, 4],
    num_head_channels=64,
    use_spatial_transformer=True,
    use_linear_in_transformer=True,
    transformer_depth=[1, 2, 10],
    context_dim=2048,
    spatial_transformer_attn_type="softmax",
    legacy=False,
)


def vm(field: str) -> float:
    """A /proc/self/status field in GiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    return 0.0


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def reset_peak() -> None:
    gc.collect()
    trim_heap()
    Path("/proc/self/clear_refs").write_text("5")


def median_call(fn, inputs, steps: int) -> tuple[float, torch.Tensor]:
    out = fn(*inputs)  # warm-up (OpenVINO compiles here)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        out = fn(*inputs)
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="picture side in px (latent = size / 8)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--cache", default="/tmp/sd-ov-sdxl-bench")
    parser.add_argument("--json", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the exported IR (10 GB)")
    args = parser.parse_args()
    from sgm.modules.diffusionmodules.openaimodel import UNetModel

    rows: dict[str, dict] = {}

    def phase(name: str, started: float, **extra) -> None:
        rows[name] = {"s": round(time.perf_counter() - started, 1), "peak_gib": round(vm("VmHWM"), 2)}
        rows[name].update(extra)
        rows[name]["rss_after_gib"] = round(vm("VmRSS"), 2)
        print(f"[sdxl] {name}: {rows[name]}", flush=True)

    reset_peak()
    started = time.perf_counter()
    torch.manual_seed(0)
    unet = randomize_zero_init(UNetModel(**SDXL_BASE).eval(), seed=0)
    spec = describe(unet)
    phase("build torch UNet", started, parameters_g=round(spec.parameters / 1e9, 3))

    gen = torch.Generator().manual_seed(0)
    side = args.size // 8
    inputs = (
        torch.randn(2, 4, side, side, generator=gen),
        torch.full((2,), 500.0),
        torch.randn(2, 77, spec.context_dim, generator=gen),
        torch.randn(2, spec.adm_channels, generator=gen),
    )
    reset_peak()
    started = time.perf_counter()
    with torch.no_grad():
        torch_s, reference = median_call(unet, inputs, args.steps)
    phase("torch steps", started, s_per_step=round(torch_s, 2))

    cache_dir = Path(args.cache)
    reset_peak()
    started = time.perf_counter()
    entry = engine.prepare_entry(unet, cache_dir, "sdxl-random", engine.weights_hash(unet)).entry
    disk = sum(f.stat().st_size for f in entry.path.iterdir()) / 2**30
    phase("export (trace, convert, save)", started, ir_gib=round(disk, 2))

    del unet
    reset_peak()
    started = time.perf_counter()
    served = engine.open_unet(entry)
    ov_s, out = median_call(served, inputs, args.steps)
    compile_s = sum(served.stats.compiles.values())
    phase(
        "OpenVINO compile + steps (torch UNet freed)",
        started,
        s_per_step=round(ov_s, 2),
        compile_s=round(compile_s, 1),
        rel_l2_vs_torch=float(f"{metrics.rel_l2(out, reference):.2e}"),
    )
    result = {
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "size": args.size,
        "steps": args.steps,
        "phases": rows,
        "speedup": round(torch_s / ov_s, 2),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    served.release()
    if not args.keep:
        shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
