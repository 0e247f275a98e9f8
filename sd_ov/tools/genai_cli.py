"""`python -m sd_ov export-genai`: a checkpoint's recipe as the folder OpenVINO GenAI runs (genai.py)."""

from __future__ import annotations

import argparse
import json

from ..errors import SdOvError
from .genai_scheduler import SAMPLERS


def add_export_genai(sub, default_cache: str) -> None:
    """The command's arguments, on the CLI's subparsers."""
    gen = sub.add_parser(
        "export-genai", help="a checkpoint's recipe as the folder OpenVINO GenAI (and Model Server) runs"
    )
    gen.add_argument("--checkpoint", required=True, help="the SD1.x/SD2.x/SDXL .safetensors or .ckpt file")
    gen.add_argument("--out", required=True, help="the folder to write (replaced whole if it exists)")
    gen.add_argument(
        "--recipe", default=None, help="a recipe Optimize made, e.g. 'INT8 ToMe0.5' (default: FP32)"
    )
    gen.add_argument("--name", default=None, help="the checkpoint's name in the cache (default: file stem)")
    gen.add_argument("--config", default=None, help="UNet config (default: detected sd15/sd2/sdxl)")
    gen.add_argument(
        "--sampler",
        default="Euler",
        help=f"the webui sampler GenAI's scheduler reproduces: {', '.join(SAMPLERS)} (others: Euler, said)",
    )
    gen.add_argument(
        "--prediction",
        choices=("epsilon", "v_prediction"),
        default="epsilon",
        help="what the UNet predicts: v_prediction for SD2 768-v models (the webui detects it itself)",
    )
    gen.add_argument(
        "--clip-skip", type=int, default=1, help="the text encoder's layer, as the webui's Clip skip"
    )
    gen.add_argument(
        "--tokenizer",
        default="openai/clip-vit-large-patch14",
        help="CLIP tokenizer: a folder or a cached HF id",
    )
    gen.add_argument("--cache", default=default_cache, help="the cache folder (the webui's: models/OpenVINO)")
    gen.set_defaults(run=run_export_genai)


def run_export_genai(args: argparse.Namespace) -> int:
    from ..graphs.ldm_unet import load_config
    from ..progress import console
    from .genai import export_genai
    from .genai_source import source_from_checkpoint

    try:
        from transformers import CLIPTokenizerFast
    except ImportError as err:
        raise SdOvError("transformers is needed for the CLIP tokenizer: pip install transformers") from err
    try:
        tokenizer = CLIPTokenizerFast.from_pretrained(args.tokenizer)
    except OSError as err:
        raise SdOvError(
            f"no CLIP tokenizer at {args.tokenizer!r} ({err}); --tokenizer names a folder with "
            "vocab.json and merges.txt, or a Hugging Face model id in the local cache"
        ) from err
    source = source_from_checkpoint(
        args.checkpoint,
        args.cache,
        tokenizer,
        recipe_label=args.recipe,
        name=args.name,
        unet_config=load_config(args.config) if args.config else None,
        clip_skip=args.clip_skip,
        prediction_type=args.prediction,
        progress=console,
    )
    source.sampler = args.sampler
    out = export_genai(source, args.out, console)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    made = {"folder": str(out), "recipe": args.recipe or "FP32", "disk_bytes": size, "notes": source.notes}
    print(json.dumps(made, indent=2))
    return 0
