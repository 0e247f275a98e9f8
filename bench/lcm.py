"""The few-step path: an LCM-LoRA picture (4 steps of the webui's LCM sampler at CFG 1, so one
batch-1 UNet call per step) with the LoRA on every layer, 3x3 convolutions included, as LCM-LoRA
trains them: OpenVINO's LoRA branch against torch with the LoRA merged into its weights.

Question it answers (issue #10): is the few-step request, where a CPU user gets a picture in
seconds, served by OpenVINO with its LoRA, and how long does the whole request take against the
same request on torch? The LoRA is seeded random at LCM-LoRA's rank (64) on every branch layer;
the models have seeded random weights (bench/picture.py's), so the picture is no LCM picture:
the timing and the PSNR against torch's picture on the same weights are what count.

Run by hand after bench/picture.py has made its cache entries (a few minutes at 512²):

    python bench/lcm.py --cache /tmp/sd_ov_bench_picture
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))

from picture import RECIPES, SCALE, prepare, to_pixels, torch_modules  # noqa: E402
from unet_step import machine_info  # noqa: E402

from sd_ov.graphs.lora_branch import LoraLayer  # noqa: E402
from sd_ov.graphs.traceable_unet import traceable  # noqa: E402
from sd_ov.optimize import metrics  # noqa: E402
from sd_ov.optimize.sampling import sample_lcm  # noqa: E402
from sd_ov.runtime.text_encoder import OVTextEncoder  # noqa: E402
from sd_ov.runtime.vae import OVVae  # noqa: E402
from sd_ov.serve import engine

CONFIGS = ("torch-ldm", "torch-sdpa", "fp32", "int8", "int8-tome")


def lcm_like_lora(slots, rank: int, seed: int = 0) -> dict[str, LoraLayer]:
    """Rank `rank` on every branch layer; `down` in torch's layout ([r, in*kh*kw] for a conv)."""
    rng = np.random.default_rng(seed)
    return {
        path: LoraLayer(
            rng.standard_normal((rank, slot.in_features), dtype=np.float32) / slot.in_features**0.5,
            rng.standard_normal((slot.out_features, rank), dtype=np.float32) * 2e-3,
        )
        for path, slot in slots.items()
    }


def merged(unet: torch.nn.Module, lora: dict[str, LoraLayer]) -> torch.nn.Module:
    """Torch's answer: a copy with `up @ down` added to each layer's weight (the webui's merge)."""
    copy_ = copy.deepcopy(unet)
    modules = dict(copy_.named_modules())
    with torch.no_grad():
        for path, layer in lora.items():
            weight = modules[path].weight
            weight += torch.from_numpy(layer.up @ layer.down).reshape(weight.shape)
    return copy_


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--config", default="sd15")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "sd_ov_bench_picture")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    text, unet, vae = torch_modules(args.config)
    entries = prepare(args.cache, text, unet, vae, [c for c in CONFIGS if c in RECIPES])
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 49406, (1, 77), generator=gen)  # the prompt only: no uncond at CFG 1
    noise = torch.randn(1, 4, args.size // 8, args.size // 8, generator=gen)
    embedding = text.text_model.embeddings.token_embedding

    rows = {}
    lora = None
    for config in CONFIGS:
        print(f"picture: {config}", flush=True)
        with torch.no_grad():
            if config.startswith("torch"):
                if lora is None:  # the slots come from the branch graph: made by the first OV config
                    lora = lcm_like_lora(engine.open_unet(entries["fp32"], lora=True).lora_slots, args.rank)
                torch_unet = merged(unet, lora)
                started = time.perf_counter()
                hidden = text(input_ids=ids).last_hidden_state
                if config == "torch-sdpa":
                    with traceable(torch_unet):
                        result = sample_lcm(torch_unet, noise, hidden, args.steps)
                else:
                    result = sample_lcm(torch_unet, noise, hidden, args.steps)
                image = to_pixels(vae.decode(result.latent / SCALE))
                del torch_unet
            else:
                te, ov_vae = OVTextEncoder(entries["text_encoder"]), OVVae(entries["vae"])
                runtime = engine.open_unet(entries[config], lora=True)
                if lora is None:
                    lora = lcm_like_lora(runtime.lora_slots, args.rank)
                runtime.set_lora(lora)
                hidden = te.hidden(embedding(ids))  # warm-up: every model compiled for these shapes
                runtime(noise, torch.full((1,), 500.0), hidden)
                ov_vae.decode(noise)
                started = time.perf_counter()
                hidden = te.hidden(embedding(ids))
                result = sample_lcm(runtime, noise, hidden, args.steps)
                image = to_pixels(ov_vae.decode(result.latent / SCALE))
                runtime.release()
            total = time.perf_counter() - started
        rows[config] = {"picture_s": total, "unet_s": sum(result.step_seconds), "image": image}

    reference = rows["torch-sdpa"]["image"]
    base = rows["torch-ldm"]
    lines = [
        f"# LCM-LoRA path: {args.config} at {args.size}², {args.steps} LCM steps at CFG 1 (UNet batch 1), "
        f"a rank-{args.rank} LoRA on all {len(lora)} branch layers (3x3 convs included)",
        f"command: python bench/lcm.py {shlex.join(argv if argv is not None else sys.argv[1:])}",
        f"machine: {json.dumps(machine_info())}",
        "",
        "| configuration | picture s | UNet s | torch-ldm ÷ this: picture | UNet | PSNR vs torch-sdpa |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for config, row in rows.items():
        row["psnr_db"] = metrics.psnr(row.pop("image"), reference)
        lines.append(
            f"| {config} | {row['picture_s']:.1f} | {row['unet_s']:.1f} "
            f"| {base['picture_s'] / row['picture_s']:.2f}x | {base['unet_s'] / row['unet_s']:.2f}x "
            f"| {row['psnr_db']:.1f} dB |"
        )
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "machine": machine_info()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
