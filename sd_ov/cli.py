"""Command line: `python -m sd_ov demo | export | optimize | cache`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .compress import INT8_MODES
from .errors import SdOvError
from .recipe import DEFAULT_SAMPLES, PRUNE_MODES
from .runtime import PRECISIONS, SHAPE_POLICIES

DEFAULT_CACHE = "sd_ov_cache"


def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="CPU", help="OpenVINO device: CPU, GPU, NPU, AUTO, ...")
    p.add_argument("--precision", default="f32", choices=PRECISIONS, help="inference precision hint")
    p.add_argument("--shape-policy", default="static", choices=SHAPE_POLICIES)
    p.add_argument("--cache", default=DEFAULT_CACHE, help="cache folder for exported UNets")


def _demo(args: argparse.Namespace) -> int:
    from .demo import format_result, run_demo

    result = run_demo(
        config=args.config,
        size=args.size,
        steps=args.steps,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        shape_policy=args.shape_policy,
        cache_dir=args.cache,
        out=args.out,
    )
    print(format_result(result, args.size, args.steps))
    return 0


def _export(args: argparse.Namespace) -> int:
    import torch

    from . import engine, metrics
    from .ldm_unet import load_config, load_unet_from_checkpoint
    from .progress import console

    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise SdOvError(f"no checkpoint file at {checkpoint}")
    console(f"loading the UNet of {checkpoint.name}", 0.0)
    unet = load_unet_from_checkpoint(checkpoint, load_config(args.config) if args.config else None)
    console("hashing the checkpoint", 0.05)
    prepared = engine.prepare_entry(
        unet, args.cache, args.name or checkpoint.stem, engine.file_hash(checkpoint), progress=console
    )
    entry = prepared.entry
    ov_unet = engine.open_unet(entry, args.device, args.precision, args.shape_policy, progress=console)
    width, height = (int(v) for v in args.size.lower().split("x"))
    spec = entry.manifest["unet"]
    started = time.perf_counter()
    ov_unet.prepare(args.batch, height // 8, width // 8)
    compile_s = time.perf_counter() - started
    summary = {
        "entry": str(entry.path),
        "exported": prepared.exported,
        "disk_bytes": entry.manifest["disk_bytes"],
        "timings": entry.manifest.get("timings"),
        "compile_s": round(compile_s, 2),
        "device": ov_unet.device,
    }
    if args.verify:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(args.batch, spec["in_channels"], height // 8, width // 8, generator=gen)
        t = torch.full((args.batch,), 500.0)
        c = torch.randn(args.batch, 77, spec["context_dim"], generator=gen)
        with torch.no_grad():
            ref = unet(x, t, c)
        summary["verify_rel_l2"] = metrics.rel_l2(ov_unet(x, t, c), ref)
    print(json.dumps(summary, indent=2))
    return 0


def _optimize(args: argparse.Namespace) -> int:
    from . import engine
    from .calibration import random_prompt_capture
    from .ldm_unet import build_unet, describe, load_config, load_unet_from_checkpoint
    from .optimize import Measure, optimize
    from .progress import console
    from .recipe import Recipe

    recipe = Recipe(
        int8=args.int8,
        tome=args.tome,
        prune=args.prune,
        prune_ratio=args.prune_ratio,
        precision=args.precision,
        smooth_quant=args.smooth_quant,
        samples=args.samples,
    )
    if args.checkpoint:
        checkpoint = Path(args.checkpoint)
        if not checkpoint.is_file():
            raise SdOvError(f"no checkpoint file at {checkpoint}")
        console(f"loading the UNet of {checkpoint.name}", 0.0)
        unet = load_unet_from_checkpoint(checkpoint, load_config(args.config) if args.config else None)
        name, key = args.name or checkpoint.stem, engine.file_hash(checkpoint)
    else:  # a random-weight UNet: speed and fidelity to torch, not pictures
        unet = build_unet(load_config(args.config or "tiny"), seed=args.seed)
        name, key = args.name or f"random-{args.config or 'tiny'}", engine.weights_hash(unet)
    calib_w, calib_h = (int(v) for v in args.calib_size.lower().split("x"))
    width, height = (int(v) for v in args.size.lower().split("x"))
    capture = random_prompt_capture(describe(unet), args.calib_prompts, args.calib_steps, (calib_w, calib_h))
    entry = optimize(
        unet,
        args.cache,
        name,
        key,
        recipe,
        capture,
        device=args.device,
        measure=Measure(width, height, args.batch, calls=args.calls),
        progress=console,
    )
    print(
        json.dumps({"entry": str(entry.path), "label": recipe.label(), **entry.manifest["report"]}, indent=2)
    )
    return 0


def _cache(args: argparse.Namespace) -> int:
    from . import cache

    if args.delete:
        cache.delete(Path(args.delete))
        print(f"deleted {args.delete}")
        return 0
    for entry in cache.list_entries(Path(args.cache)):
        m = entry.manifest
        size = m["disk_bytes"] / 2**20
        report = m.get("report") or {}
        speed = (
            f"  {report['speedup']:.2f}x torch, rel L2 {report['rel_l2']:.3g}" if "speedup" in report else ""
        )
        print(f"{entry.path}  {m['checkpoint']['name']}  {m['recipe'].get('name')}  {size:.0f} MiB{speed}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sd_ov", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="torch vs OpenVINO on a small random-weight SD UNet")
    demo.add_argument("--config", default="tiny", help="UNet config: tiny, sd15, sd2 or a JSON file")
    demo.add_argument("--size", type=int, default=256, help="picture size in pixels (latent is size/8)")
    demo.add_argument("--steps", type=int, default=8)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="sd_ov_demo.png", help="where to write the picture")
    _add_runtime_args(demo)
    demo.set_defaults(run=_demo)

    export = sub.add_parser("export", help="export a SD1.x/SD2.x single-file checkpoint's UNet")
    export.add_argument("--checkpoint", required=True, help=".safetensors or .ckpt file")
    export.add_argument("--config", default=None, help="UNet config (default: detected sd15/sd2)")
    export.add_argument("--name", default=None, help="name of the cache entry (default: file stem)")
    export.add_argument("--size", default="512x512", help="picture size to compile for, WxH")
    export.add_argument("--batch", type=int, default=2, help="UNet batch to compile for (2 = cond+uncond)")
    export.add_argument("--verify", action="store_true", help="compare one UNet call with torch")
    _add_runtime_args(export)
    export.set_defaults(run=_export)

    opt = sub.add_parser("optimize", help="compress, compile and measure a UNet recipe (INT8, ToMe, pruning)")
    opt.add_argument(
        "--checkpoint", default=None, help=".safetensors/.ckpt (default: random-weight --config)"
    )
    opt.add_argument("--config", default=None, help="UNet config: tiny, sd15, sd2 or a JSON file")
    opt.add_argument("--name", default=None, help="name of the cache entry")
    opt.add_argument("--seed", type=int, default=0, help="weights seed of a random-weight UNet")
    opt.add_argument("--int8", default="hybrid", choices=INT8_MODES)
    opt.add_argument("--tome", type=float, default=0.0, help="token merging ratio, 0 to 0.75")
    opt.add_argument("--prune", default="off", choices=PRUNE_MODES)
    opt.add_argument("--prune-ratio", type=float, default=0.0)
    opt.add_argument("--smooth-quant", action="store_true")
    opt.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="calibration samples")
    opt.add_argument("--calib-prompts", type=int, default=4)
    opt.add_argument("--calib-steps", type=int, default=8)
    opt.add_argument("--calib-size", default="256x256", help="calibration picture size, WxH")
    opt.add_argument("--size", default="512x512", help="picture size to measure at, WxH")
    opt.add_argument("--batch", type=int, default=2)
    opt.add_argument("--calls", type=int, default=2, help="timed UNet calls per runtime")
    _add_runtime_args(opt)
    opt.set_defaults(run=_optimize)

    cache_cmd = sub.add_parser("cache", help="list cache entries, or delete one")
    cache_cmd.add_argument("--cache", default=DEFAULT_CACHE)
    cache_cmd.add_argument("--delete", default=None, help="path of an entry to delete")
    cache_cmd.set_defaults(run=_cache)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (SdOvError, ValueError) as err:  # bad input: one clear line, no traceback
        print(f"sd-ov: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
