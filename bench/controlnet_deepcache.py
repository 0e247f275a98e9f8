"""ControlNet with DeepCache: does caching the deep features keep a ControlNet picture as close to
its own no-cache picture as DeepCache keeps a plain picture?

Question (issue #24, item 4). With ControlNet, each control residual enters the UNet at a skip
join (one per input block) and after the middle block. A DeepCache shallow call runs only the
outermost blocks around a feature cached at the last full call, so the deep residuals of that
full call are baked into the feature. Two ways to serve the shallow calls are measured:
- "control each call": the control model still runs every call and its fresh residuals enter the
  shallow skip joins (the UNet saves its deep blocks; the control model costs what it costs);
- "control on full calls": the shallow calls reuse the full call's residuals (the control model
  runs only on full calls too).
Each is compared with the ControlNet picture without DeepCache, beside what DeepCache alone does
to the picture without ControlNet, and what the control model changes at all (the ControlNet
picture against the plain one: if that is small, the comparison says little).

Torch only (the question is the algorithm's, not the runtime's): the SD1.5 UNet with seeded
random weights, the extension's cldm ControlNet class with a control model file's weights (the
real webui's test model is seeded random), SD's VAE with seeded random weights for the PSNR of
decoded pictures, random prompt embeddings, Euler with CFG 7, a smooth random hint. Random
weights: the figures are fidelity to the same model without caching, not picture quality.

    python bench/controlnet_deepcache.py --controlnet <webui>/extensions/sd-webui-controlnet \\
        --model <webui>/models/ControlNet/control_sd15_random.safetensors [--size 256 --steps 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))

from control_model import extension_control_model  # noqa: E402
from picture import SCALE, to_pixels  # noqa: E402
from unet_step import machine_info  # noqa: E402

from sd_ov.graphs.deepcache import DeepCacheConfig, full_call_indices  # noqa: E402
from sd_ov.graphs.ldm_unet import build_unet, load_config  # noqa: E402
from sd_ov.optimize import metrics  # noqa: E402
from sd_ov.optimize.sampling import sample_euler  # noqa: E402
from sd_ov.runtime.vae import SD_DDCONFIG, AutoencoderParts  # noqa: E402
from sd_ov.serve.preset import FASTEST  # noqa: E402


class ControlledDeepCacheUNet:
    """The ldm UNet's forward with ControlNet's residuals added as sd-webui-controlnet adds them
    (the middle block's output, then each skip), and DeepCache's full/shallow calls by schedule."""

    def __init__(self, unet, control, hint, config: DeepCacheConfig, calls: int, control_on_shallow: bool):
        self.unet, self.control, self.hint = unet, control, hint
        self.full = full_call_indices(config, calls) if config.enabled else None
        self.branch, self.control_on_shallow = config.branch, control_on_shallow
        self.calls, self.feature, self.residuals, self.pattern = 0, None, None, ""

    def _embedding(self, t: torch.Tensor) -> torch.Tensor:
        from ldm.modules.diffusionmodules.util import timestep_embedding

        return self.unet.time_embed(timestep_embedding(t, self.unet.model_channels, repeat_only=False))

    def __call__(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        full = self.full is None or self.calls in self.full
        self.calls += 1
        if self.control is not None and (full or self.control_on_shallow):
            hint = self.hint.expand(x.shape[0], -1, -1, -1)
            self.residuals = list(self.control(x, hint, t, context))
        residuals = list(self.residuals) if self.control is not None else None
        unet, emb = self.unet, self._embedding(t)
        last = len(unet.output_blocks) - 1 - self.branch
        hs, h = [], x
        blocks = unet.input_blocks if full else unet.input_blocks[: self.branch + 1]
        for module in blocks:
            h = module(h, emb, context)
            hs.append(h)
        if full:
            h = unet.middle_block(h, emb, context)
            if residuals:
                h = h + residuals[-1]
        else:
            h = self.feature
        self.pattern += "F" if full else "S"
        for i, module in enumerate(unet.output_blocks):
            if not full and i < last:
                continue
            if full and i == last:
                self.feature = h
            skip = hs.pop()
            if residuals:
                skip = skip + residuals[len(hs)]
            h = module(torch.cat([h, skip], dim=1), emb, context)
        return unet.out(h)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--controlnet", type=Path, required=True, help="the sd-webui-controlnet folder")
    parser.add_argument("--model", type=Path, required=True, help="a SD1.5 control model (.safetensors)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=2, help="pictures per configuration")
    args = parser.parse_args()
    torch.set_num_threads(2)
    unet = build_unet(load_config("sd15"), seed=0)
    control = extension_control_model(args.controlnet, args.model)
    vae = AutoencoderParts(SD_DDCONFIG)
    gen = torch.Generator().manual_seed(1)
    coarse = torch.rand(1, 3, args.size // 32, args.size // 32, generator=gen)
    hint = torch.nn.functional.interpolate(coarse, size=(args.size, args.size), mode="bilinear")
    configs = {
        "preset DeepCache": FASTEST.deepcache,
        "interval 3, branch 0, non-uniform": DeepCacheConfig(3, 0, "non-uniform"),
    }
    runs = {"no cache": (DeepCacheConfig(), True)}
    for name, config in configs.items():
        runs[f"{name}, control each call"] = (config, True)
        runs[f"{name}, control on full calls"] = (config, False)
    rows, seconds = {}, {}
    for seed in range(args.seeds):
        gen = torch.Generator().manual_seed(100 + seed)
        latent = args.size // 8
        noise = torch.randn(1, 4, latent, latent, generator=gen)
        cond, uncond = torch.randn(1, 77, 768, generator=gen), torch.randn(1, 77, 768, generator=gen)
        pictures = {}
        for with_control in (False, True):
            for name, (config, on_shallow) in runs.items():
                if not with_control and not on_shallow:
                    continue  # without ControlNet the two ways are the same
                fn = ControlledDeepCacheUNet(
                    unet, control if with_control else None, hint, config, args.steps * 1, on_shallow
                )
                started = time.perf_counter()
                latent_out = sample_euler(fn, noise, cond, uncond, steps=args.steps).latent
                key = (with_control, name)
                seconds.setdefault(key, []).append(time.perf_counter() - started)
                with torch.no_grad():
                    pictures[key] = to_pixels(vae.decode(latent_out / SCALE))
                print(
                    f"seed {seed} {'ControlNet' if with_control else 'plain'} {name}: {fn.pattern}",
                    flush=True,
                )
        for (with_control, name), picture in pictures.items():
            reference = pictures[(with_control, "no cache")]
            label = (
                f"ControlNet: {name}"
                if with_control
                else f"plain: {name.removesuffix(', control each call')}"
            )
            rows.setdefault(label, []).append(metrics.psnr(picture, reference))
        rows.setdefault("ControlNet against plain (no cache)", []).append(
            metrics.psnr(pictures[(True, "no cache")], pictures[(False, "no cache")])
        )
    result = {
        "machine": machine_info(),
        "size": args.size,
        "steps": args.steps,
        "psnr_db": {k: [round(v, 1) for v in vs] for k, vs in rows.items()},
        "seconds": {
            (f"ControlNet: {n}" if c else f"plain: {n.removesuffix(', control each call')}"): round(
                sum(v) / len(v), 1
            )
            for (c, n), v in seconds.items()
        },
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
