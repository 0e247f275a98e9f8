"""The whole picture, side by side in one run: a txt2img as the webui makes it (text encoder for
prompt and negative prompt, Euler with CFG, one batch-2 UNet call per step, VAE decode) on torch
and on each OpenVINO configuration, SD1.5-sized with seeded random weights.

Question it answers (issue #12): how much faster is the whole request, not only the UNet, and how
far is the picture from torch's? Random weights: the PSNR/SSIM against torch's picture is a
floor of fidelity to torch on the same weights, not a measure of picture quality.

Configurations (`--configs`, default all):
- torch-ldm: torch with ldm's own einsum/softmax attention, the arithmetic of the webui's default
  on CPU (its InvokeAI attention computes the same einsum/softmax, in slices): the "torch" a
  webui user on CPU gets;
- torch-sdpa: torch at its fastest (PyTorch's scaled_dot_product_attention);
- fp32, int8, int8-tome: OpenVINO UNet recipes (plain FP32, INT8 hybrid, INT8 hybrid + ToMe 0.5),
  each also `+dc`: with its DeepCache pair (branch 0, interval 3, non-uniform schedule);
- fastest: the preset (`sd_ov.serve.preset.FASTEST`), its precision as this CPU runs it;
- fastest-ff: the same with INT8 hybrid-ff (the feed-forward MatMuls W8A8 too).
`--intervals 3,4` makes each DeepCache configuration's picture at each interval (rows `... i4`).
The OpenVINO text encoder and VAE serve every OpenVINO configuration; models are compiled by a
warm-up call before the timed picture (a webui keeps them compiled between jobs, or imports
their blobs). The reference picture is torch-sdpa's (the torch pictures agree to rounding).

Run by hand (about an hour at 512², 20 steps, on 2 cores, the first time; recipes are cached):

    python bench/picture.py --cache /tmp/sd_ov_bench_picture
    python bench/picture.py --config tiny --size 128 --steps 4     # smoke test
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))

from unet_step import machine_info  # noqa: E402

from sd_ov.graphs.deepcache import DeepCacheConfig  # noqa: E402
from sd_ov.graphs.ldm_unet import build_unet, describe, load_config  # noqa: E402
from sd_ov.graphs.traceable_unet import traceable  # noqa: E402
from sd_ov.optimize import metrics  # noqa: E402
from sd_ov.optimize.calibration import random_prompt_capture  # noqa: E402
from sd_ov.optimize.pair import optimize_with_deepcache  # noqa: E402
from sd_ov.optimize.sampling import sample_euler  # noqa: E402
from sd_ov.runtime.cpu_caps import cpu_caps  # noqa: E402
from sd_ov.runtime.text_encoder import OVTextEncoder, prepare_text_encoder_entry  # noqa: E402
from sd_ov.runtime.vae import OVVae, prepare_vae_entry  # noqa: E402
from sd_ov.serve import engine
from sd_ov.serve.preset import FASTEST  # noqa: E402
from sd_ov.store import cache
from sd_ov.store.recipe import Recipe  # noqa: E402

RECIPES = {"fp32": Recipe(), "int8": Recipe(int8="hybrid"), "int8-tome": Recipe(int8="hybrid", tome=0.5)}
DEEPCACHE = DeepCacheConfig(3, 0, "non-uniform")
CONFIGS = (
    "torch-ldm",
    "torch-sdpa",
    "fp32",
    "fp32+dc",
    "int8",
    "int8+dc",
    "int8-tome",
    "int8-tome+dc",
    "fastest",
    "fastest-ff",
)
SCALE = 0.18215  # SD1.x latent scale


@dataclass
class Picture:
    image: np.ndarray
    total_s: float
    text_s: float
    unet_s: float
    vae_s: float
    pattern: str = ""


def torch_modules(config: str):
    """CLIP-L text encoder, the UNet and the VAE with seeded random weights."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from sd_ov.runtime.text_encoder import CLIP_L_CONFIG
    from sd_ov.runtime.vae import SD_DDCONFIG, AutoencoderParts

    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(**CLIP_L_CONFIG)).eval()
    unet_config = {**load_config(config), "context_dim": CLIP_L_CONFIG["hidden_size"]}  # tiny: CLIP-L's width
    return text, build_unet(unet_config, seed=0), AutoencoderParts(SD_DDCONFIG)


def to_pixels(decoded: torch.Tensor) -> np.ndarray:
    """The webui's conversion of a decoded picture: [-1, 1] → uint8 HWC."""
    return ((decoded[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def prepare(root: Path, text, unet, vae, configs: list[str]) -> dict[str, cache.CacheEntry]:
    """Every entry the configurations need: from the cache when there, else exported or optimized
    (one calibration capture for all recipes)."""
    name, key = "bench-picture", engine.weights_hash(unet)
    entries = {
        "text_encoder": prepare_text_encoder_entry(text, root, "bench-te", engine.weights_hash(text)),
        "vae": prepare_vae_entry(vae, root, "bench-vae", engine.weights_hash(vae)),
    }
    capture = random_prompt_capture(describe(unet), prompts=4, steps=8, size=(256, 256))
    recipes = {label: (RECIPES[label], DEEPCACHE.branch) for label in RECIPES}
    recipes["fastest"] = (FASTEST.recipe_for("CPU"), FASTEST.deepcache.branch)
    recipes["fastest-ff"] = (replace(FASTEST.recipe_for("CPU"), int8="hybrid-ff"), FASTEST.deepcache.branch)
    for label in sorted({c.split("+")[0] for c in configs if not c.startswith("torch")}):
        recipe, branch = recipes[label]
        pair = (recipe, recipe.with_deepcache(branch))
        found = [cache.find(root, cache.EntryKey(name, key, r))[0] for r in pair]
        if all(found):
            entries[label], entries[label + "+dc"] = found
            continue
        print(f"preparing {label} ({recipe.label()}, + its DeepCache pair)", flush=True)
        entries[label], entries[label + "+dc"] = optimize_with_deepcache(
            unet, root, name, key, recipe, capture, deepcache_branch=branch, measure=None
        )
    return entries


def torch_picture(text, unet, vae, ids, noise, steps: int, sdpa: bool) -> Picture:
    with torch.no_grad():
        started = time.perf_counter()
        hidden = text(input_ids=ids).last_hidden_state
        text_s = time.perf_counter() - started
        if sdpa:
            with traceable(unet):
                result = sample_euler(unet, noise, hidden[:1], hidden[1:], steps=steps)
        else:
            result = sample_euler(unet, noise, hidden[:1], hidden[1:], steps=steps)
        vae_started = time.perf_counter()
        image = to_pixels(vae.decode(result.latent / SCALE))
        done = time.perf_counter()
    return Picture(image, done - started, text_s, sum(result.step_seconds), done - vae_started)


def openvino_picture(
    entries, config: str, embedding, ids, noise, steps: int, interval: int | None = None
) -> Picture:
    preset = config.startswith("fastest")
    dc = config.endswith("+dc") or preset
    unet_entry = entries[config + "+dc" if preset else config]
    te = OVTextEncoder(entries["text_encoder"])
    ov_vae = OVVae(entries["vae"])
    if dc:
        deepcache = FASTEST.deepcache if preset else DEEPCACHE
        if interval is not None:
            deepcache = replace(deepcache, interval=interval)
        unet = engine.open_deepcache(unet_entry, deepcache, precision=unet_entry.manifest.recipe.precision)
    else:
        unet = engine.open_unet(unet_entry, precision=unet_entry.manifest.recipe.precision)
    # Warm-up: every model compiled for these shapes before the timed picture.
    with torch.no_grad():
        hidden = te.hidden(embedding(ids))
        x = noise.repeat(2, 1, 1, 1)
        t = torch.full((2,), 500.0)
        if dc:  # one full and one shallow call compile both models
            unet.start(DeepCacheConfig(2, deepcache.branch), 2)
            unet(x, t, hidden)
            unet(x, t, hidden)
            unet.start(deepcache, steps)
        else:
            unet(x, t, hidden)
        ov_vae.decode(noise)
        started = time.perf_counter()
        hidden = te.hidden(embedding(ids))
        text_s = time.perf_counter() - started
        result = sample_euler(unet, noise, hidden[:1], hidden[1:], steps=steps)
        vae_started = time.perf_counter()
        image = to_pixels(ov_vae.decode(result.latent / SCALE))
        done = time.perf_counter()
    pattern = "".join(unet.pattern) if dc else ""
    unet.release()
    return Picture(image, done - started, text_s, sum(result.step_seconds), done - vae_started, pattern)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="sd15")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "sd_ov_bench_picture")
    p.add_argument("--json", type=Path)
    p.add_argument("--intervals", default="", help="DeepCache intervals, e.g. 3,4 (default: each config's)")
    args = p.parse_args(argv)
    intervals = [int(n) for n in args.intervals.split(",") if n.strip()] or [None]
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        p.error(f"unknown configurations {sorted(unknown)}; known: {', '.join(CONFIGS)}")

    text, unet, vae = torch_modules(args.config)
    entries = prepare(args.cache, text, unet, vae, configs)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 49406, (2, 77), generator=gen)  # prompt and negative prompt, tokenized
    noise = torch.randn(1, 4, args.size // 8, args.size // 8, generator=gen)
    embedding = text.text_model.embeddings.token_embedding

    pictures: dict[str, Picture] = {}
    for config in configs:
        print(f"picture: {config}", flush=True)
        if config.startswith("torch"):
            pictures[config] = torch_picture(text, unet, vae, ids, noise, args.steps, config == "torch-sdpa")
        elif not (config.endswith("+dc") or config.startswith("fastest")) or intervals == [None]:
            pictures[config] = openvino_picture(entries, config, embedding, ids, noise, args.steps)
        else:
            for n in intervals:
                row = config if len(intervals) == 1 else f"{config} i{n}"
                pictures[row] = openvino_picture(entries, config, embedding, ids, noise, args.steps, n)

    reference = pictures.get("torch-sdpa") or pictures.get("torch-ldm")
    base = pictures.get("torch-ldm") or reference
    fast = reference
    lines = [
        f"# Whole picture: {args.config} at {args.size}², {args.steps} Euler steps, CFG (UNet batch 2), "
        f"DeepCache {DEEPCACHE.label()}; fastest = {FASTEST.describe()} "
        f"(bf16 ÷ f32 speed here: {cpu_caps().bf16_speedup:.2f})",
        f"command: python bench/picture.py {shlex.join(argv if argv is not None else sys.argv[1:])}",
        f"machine: {json.dumps(machine_info())}",
        "",
        "| configuration | picture s | UNet s | text enc. + VAE s | torch-ldm ÷ this: picture | UNet "
        "| torch-sdpa ÷ this: picture | UNet | PSNR vs torch | SSIM | full/shallow calls |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    rows = {}
    for config, pic in pictures.items():
        psnr = metrics.psnr(pic.image, reference.image) if reference is not None else float("nan")
        ssim = metrics.ssim(pic.image, reference.image) if reference is not None else float("nan")
        calls = f"{pic.pattern.count('F')}/{pic.pattern.count('S')}" if pic.pattern else ""
        rows[config] = {
            "picture_s": pic.total_s,
            "unet_s": pic.unet_s,
            "text_s": pic.text_s,
            "vae_s": pic.vae_s,
            "psnr_db": psnr,
            "ssim": ssim,
            "pattern": pic.pattern,
        }
        lines.append(
            f"| {config} | {pic.total_s:.1f} | {pic.unet_s:.1f} | {pic.text_s + pic.vae_s:.1f} "
            f"| {base.total_s / pic.total_s:.2f}x | {base.unet_s / pic.unet_s:.2f}x "
            f"| {fast.total_s / pic.total_s:.2f}x | {fast.unet_s / pic.unet_s:.2f}x "
            f"| {psnr:.1f} dB | {ssim:.3f} | {calls} |"
        )
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "machine": machine_info()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
