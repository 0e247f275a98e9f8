"""LoRA branch cost on an SD1.5-sized UNet: per-step time of the plain graph against the graph with
the LoRA branch (no LoRA, 1 LoRA, 3 LoRAs), the time to switch LoRA sets, and memory, side by side.

Question it answers (issue #10): what does serving LoRAs through state variables cost a user who
has none, and one who has some, against recompiling (what the anchors do)? The LoRAs are seeded
random, rank 16 on every layer a kohya SD1.5 LoRA trains (attention q/k/v/out, feed-forward,
proj_in/proj_out), and one LoCon on every layer, 3x3 convs included (as LCM-LoRA trains); the
UNet has seeded random weights. Speed only: what the branch computes is
checked against torch by tests/engine/test_lora_branch.py.

Fairness: both models are compiled first; then each round calls plain, branch+none, branch+1 and
branch+3 (the first of each round rotating), every call with the same inputs; s/step is the median
of --steps rounds after one warm-up round. A switch (set_lora, then the states put into the infer
request) is timed on its own.

Run by hand (never by the tests); about 6 minutes at 512² on 2 cores with --ir:

    python bench/lora.py --ir <cache>/<entry>/unet.xml      # an exported SD1.5 FP32 IR
    python bench/lora.py                                    # exports an sd15-config UNet first
    python bench/lora.py --config tiny --size 256 --steps 2 # smoke test
"""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sd_ov.graphs.ldm_unet import build_unet, load_config
from sd_ov.graphs.lora_branch import LoraLayer, concatenate
from sd_ov.optimize import metrics
from sd_ov.runtime.memory import rss_mib
from sd_ov.runtime.unet import OVUNet
from sd_ov.serve import engine

sys.path.insert(0, str(Path(__file__).parent))
from unet_step import machine_info  # noqa: E402

BATCH, TOKENS, TIMESTEP = 2, 77, 500.0
KOHYA_LAYERS = ("attn1.to_", "attn2.to_", "ff.net.", "proj_in", "proj_out")


def random_lora(runtime: OVUNet, rank: int, seed: int, every_layer: bool = False) -> dict[str, LoraLayer]:
    """kohya's layers, or every_layer: each Linear and conv, 3x3 ones too (LoCon, LCM-LoRA)."""
    rng = np.random.default_rng(seed)
    lora = {}
    for path, slot in runtime.lora_slots.items():
        if every_layer or any(part in path for part in KOHYA_LAYERS):
            down = rng.standard_normal((rank, slot.in_features), dtype=np.float32) / slot.in_features**0.5
            up = rng.standard_normal((slot.out_features, rank), dtype=np.float32) * 1e-3
            lora[path] = LoraLayer(down, up)
    return lora


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ir", type=Path, help="an exported UNet IR (unet.xml); default: export --config")
    p.add_argument("--config", default="sd15")
    p.add_argument("--size", type=int, default=512, help="picture side (square)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    xml = args.ir
    if xml is None:
        unet = build_unet(load_config(args.config), seed=0)
        folder = Path(tempfile.mkdtemp(prefix="sd_ov_bench_lora_"))
        xml = engine.prepare_entry(unet, folder, args.config, engine.weights_hash(unet)).entry.xml_path
        del unet
        gc.collect()
    rss = {"start": rss_mib()}
    plain = OVUNet(xml)
    latent = args.size // 8
    gen = torch.Generator().manual_seed(0)
    inputs = (
        torch.randn(BATCH, plain.in_channels, latent, latent, generator=gen),
        torch.full((BATCH,), TIMESTEP),
        torch.randn(BATCH, TOKENS, plain.context_dim, generator=gen),
    )
    plain(*inputs)
    rss["plain compiled"] = rss_mib()
    started = time.perf_counter()
    branch = OVUNet(xml, lora=True)
    graph_s = time.perf_counter() - started
    reference = branch(*inputs)
    rss["+ branch model compiled"] = rss_mib()
    sets = {
        "none": {},
        "1 LoRA": random_lora(branch, args.rank, 1),
        "3 LoRAs": concatenate(random_lora(branch, args.rank, s) for s in (2, 3, 4)),
        "1 LoCon (every layer)": random_lora(branch, args.rank, 5, every_layer=True),
    }

    switch_s = {}
    for name, lora in [*sets.items(), *sets.items()]:  # each set after another one
        t0 = time.perf_counter()
        branch.set_lora(lora)
        branch.apply_lora()
        switch_s.setdefault(name, []).append(time.perf_counter() - t0)
    switch_s = {name: statistics.median(ts) for name, ts in switch_s.items()}

    configs = [("plain graph", plain, None)] + [(f"branch, {n}", branch, lora) for n, lora in sets.items()]
    times: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    outs = {}
    for round_ in range(args.steps + 1):
        order = configs[round_ % len(configs) :] + configs[: round_ % len(configs)]
        for name, runtime, lora in order:
            if lora is not None:
                runtime.set_lora(lora)
            t0 = time.perf_counter()
            outs[name] = runtime(*inputs)
            if round_:
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    base = med["plain graph"]
    lines = [
        f"# LoRA branch, {args.config} UNet at {args.size}² (batch {BATCH}), rank {args.rank} per LoRA on "
        f"{len(sets['1 LoRA'])} of {len(branch.lora_slots)} branch layers",
        f"command: python bench/lora.py {shlex.join(argv if argv is not None else sys.argv[1:])}",
        f"machine: {json.dumps(machine_info())}",
        "",
        "| graph / LoRA set | s/step | vs plain graph |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {s:.2f} | {s / base - 1:+.1%} |" for name, s in med.items()]
    lines += [
        "",
        "switch (set_lora + states into the request): "
        + ", ".join(f"{n} {s * 1000:.0f} ms" for n, s in switch_s.items())
        + "; no recompile (compiles: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in branch.stats.compiles.items())
        + f"); adding the branches to the graph: {graph_s:.1f} s",
        "memory (RSS MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in rss.items()),
        "branch without LoRA vs plain graph: rel L2 "
        f"{metrics.rel_l2(outs['branch, none'], outs['plain graph']):.1e}"
        f" (first call {metrics.rel_l2(reference, outs['plain graph']):.1e})",
    ]
    report = "\n".join(lines)
    print(report)
    if args.json:
        args.json.write_text(json.dumps({"s_per_step": med, "switch_s": switch_s, "rss_mib": rss}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
