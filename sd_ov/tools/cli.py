"""Command line: `python -m sd_ov demo | export | optimize | export-genai | cache`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import SdOvError
from ..optimize.fields import optimize_fields
from ..optimize.form import parse_size
from ..runtime.unet import DEFAULT_SHAPE_POLICY, PRECISIONS, SHAPE_POLICIES
from .genai_cli import add_export_genai

DEFAULT_CACHE = "sd_ov_cache"


def _add_runtime_args(p: argparse.ArgumentParser, fields: bool = True) -> None:
    if fields:
        p.add_argument("--device", default="CPU", help="OpenVINO device: CPU, GPU, NPU, AUTO, ...")
        p.add_argument("--precision", default="f32", choices=PRECISIONS, help="inference precision hint")
    p.add_argument("--shape-policy", default=DEFAULT_SHAPE_POLICY, choices=SHAPE_POLICIES)
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

    from ..graphs.ldm_unet import load_config, load_unet_from_checkpoint
    from ..optimize import metrics
    from ..progress import console
    from ..serve import engine

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
    width, height = parse_size(args.size, multiple=8 * entry.manifest.unet.size_multiple)
    spec = entry.manifest.unet
    started = time.perf_counter()
    ov_unet.prepare(args.batch, height // 8, width // 8)
    compile_s = time.perf_counter() - started
    summary = {
        "entry": str(entry.path),
        "exported": prepared.exported,
        "disk_bytes": entry.manifest.disk_bytes,
        "timings": entry.manifest.timings,
        "compile_s": round(compile_s, 2),
        "device": ov_unet.device,
    }
    if args.verify:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(args.batch, spec.in_channels, height // 8, width // 8, generator=gen)
        t = torch.full((args.batch,), 500.0)
        c = torch.randn(args.batch, 77, spec.context_dim, generator=gen)
        with torch.no_grad():
            ref = unet(x, t, c)
        summary["verify_rel_l2"] = metrics.rel_l2(ov_unet(x, t, c), ref)
    print(json.dumps(summary, indent=2))
    return 0


def add_optimize_fields(parser: argparse.ArgumentParser) -> None:
    """A flag for each Optimize field the command line has (the engine's table, fields.py)."""
    for row in optimize_fields().values():
        if row.flag is None:
            continue
        kwargs: dict = {
            "dest": row.name,
            "default": row.default if row.cli_default is None else row.cli_default,
            "help": row.help,
        }
        if row.kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = row.kind
            if row.widget == "radio":
                kwargs["choices"] = row.options()
        parser.add_argument(row.flag, *row.cli_aliases, **kwargs)


def optimize_form_values(args: argparse.Namespace) -> dict:
    """The CLI's flags as the Optimize form's fields: the tab and the API parse the same form."""
    values = {row.name: getattr(args, row.name) for row in optimize_fields().values() if row.flag}
    return {**values, "compare_picture": False}  # no text encoder or VAE here: no picture to compare


def _optimize(args: argparse.Namespace) -> int:
    from ..graphs.ldm_unet import build_unet, describe, load_config, load_unet_from_checkpoint
    from ..optimize.calibration import random_prompt_capture
    from ..optimize.form import parse_optimize_form
    from ..optimize.pair import optimize_with_deepcache
    from ..progress import console
    from ..serve import engine

    request = parse_optimize_form(optimize_form_values(args))  # every input checked before any work
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
    if request.preset and describe(unet).adm_channels:  # SDXL: the preset's SDXL recipe
        request = parse_optimize_form(optimize_form_values(args), sdxl=True)
    calib = request.calibration
    capture = random_prompt_capture(
        describe(unet), args.calib_prompts, calib.steps, (calib.width, calib.height)
    )
    entries = optimize_with_deepcache(
        unet,
        args.cache,
        name,
        key,
        request.recipe,
        capture,
        deepcache_branch=request.deepcache_branch,
        preset=request.preset,
        device=request.device,
        shapes=request.shapes,
        measure=request.measure(calls=args.calls),
        progress=console,
        keep_fp32=args.keep_fp32,
        # the recipe is made and stays; the progress line said why its pair was not
        pair_failed=lambda err: None,
    )
    for entry in entries:
        report = entry.manifest.report.to_json() if entry.manifest.report else {}
        branch = entry.manifest.recipe.deepcache_branch
        extra = {} if branch is None else {"deepcache_branch": branch}
        print(
            json.dumps(
                {"entry": str(entry.path), "label": request.recipe.label(), **extra, **report}, indent=2
            )
        )
    return 0


def _cache(args: argparse.Namespace) -> int:
    from ..optimize.report import entry_text, total_text
    from ..store import cache

    if args.drop_compiled:
        entry = cache.validate(Path(args.drop_compiled))
        left = cache.drop_compiled(entry)
        print(
            f"deleted the compiled blobs of {args.drop_compiled}"
            + (f"; {len(left)} in use stay" if left else "")
        )
        return 0
    if args.delete:
        left = cache.delete(Path(args.delete))
        print(f"deleted {args.delete}")
        if left:  # Windows: another process maps them
            print(f"{len(left)} files are in use by another process; they go at the next start")
        return 0
    for entry in cache.list_entries(Path(args.cache)):
        print(entry_text(entry))
    print(total_text(cache.total_bytes(Path(args.cache))))
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
    add_optimize_fields(opt)
    opt.add_argument("--calib-prompts", type=int, default=4, help="random text embeddings to sample")
    opt.add_argument("--calls", type=int, default=2, help="timed UNet calls per runtime")
    opt.add_argument(
        "--keep-fp32",
        action="store_true",
        help="keep the FP32 entries exported only to start from (deleted by default, as in the tab)",
    )
    _add_runtime_args(opt, fields=False)  # its device and precision are Optimize's fields
    opt.set_defaults(run=_optimize)

    add_export_genai(sub, DEFAULT_CACHE)

    cache_cmd = sub.add_parser("cache", help="list cache entries, or delete one")
    cache_cmd.add_argument("--cache", default=DEFAULT_CACHE)
    cache_cmd.add_argument("--delete", default=None, help="path of an entry to delete")
    cache_cmd.add_argument(
        "--drop-compiled",
        default=None,
        help="path of an entry whose compiled blobs to delete (the entry stays)",
    )
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
