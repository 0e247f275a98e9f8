"""The demo's picture: what it measured, drawn (seconds per step of torch beside OpenVINO, and where
their final latents differ), instead of a random-weight latent that would look like static."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

TORCH_COLOUR = (120, 120, 120)
OPENVINO_COLOUR = (0, 104, 181)  # OpenVINO's blue
INK = (20, 20, 20)


def difference_map(
    ov_latent: torch.Tensor, torch_latent: torch.Tensor, side: int
) -> tuple[Image.Image, float]:
    """|OpenVINO - torch| of the final latent, channels averaged, white at its largest value;
    returns the map and that value."""
    diff = (ov_latent.float() - torch_latent.float()).abs().mean(dim=0).numpy()
    peak = float(diff.max())
    scaled = np.zeros_like(diff) if peak == 0 else diff / peak
    image = Image.fromarray((scaled * 255).astype(np.uint8), "L").resize((side, side), Image.NEAREST)
    return image.convert("RGB"), peak


def draw_chart(
    path: str | Path,
    title: str,
    torch_steps: Sequence[float],
    ov_steps: Sequence[float],
    ov_latent: torch.Tensor,
    torch_latent: torch.Tensor,
    rel_l2: float,
) -> Path:
    """A PNG: per-step seconds (left), the latents' difference (right), the figures written out."""
    width, height, side = 760, 380, 220
    canvas = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    pen.text((16, 12), title, fill=INK, font=font)

    # Left: one pair of bars per sampling step, on one scale.
    left, top, plot_w, plot_h = 56, 56, 400, 240
    top_s = max(max(torch_steps), max(ov_steps)) * 1.1
    pen.line([(left, top), (left, top + plot_h), (left + plot_w, top + plot_h)], fill=INK)
    for tick in range(5):
        value = top_s * tick / 4
        y = top + plot_h - plot_h * tick / 4
        pen.text((8, y - 6), f"{value:.2f}", fill=INK, font=font)
    steps = max(len(torch_steps), len(ov_steps))
    slot = plot_w / steps
    for i in range(steps):
        for j, (series, colour) in enumerate(((torch_steps, TORCH_COLOUR), (ov_steps, OPENVINO_COLOUR))):
            if i < len(series):
                x0 = left + i * slot + 4 + j * (slot - 8) / 2
                bar_h = plot_h * series[i] / top_s
                pen.rectangle([x0, top + plot_h - bar_h, x0 + (slot - 8) / 2 - 1, top + plot_h], fill=colour)
        pen.text((left + i * slot + slot / 2 - 3, top + plot_h + 4), str(i + 1), fill=INK, font=font)
    pen.text((left, top + plot_h + 20), "seconds per sampling step (step number below)", fill=INK, font=font)
    torch_median, ov_median = float(np.median(torch_steps)), float(np.median(ov_steps))
    legend_y = top - 22
    pen.rectangle([left, legend_y, left + 10, legend_y + 10], fill=TORCH_COLOUR)
    pen.text((left + 14, legend_y), f"torch {torch_median:.3f} s/step", fill=INK, font=font)
    pen.rectangle([left + 170, legend_y, left + 180, legend_y + 10], fill=OPENVINO_COLOUR)
    speedup = torch_median / ov_median if ov_median else float("inf")
    pen.text((left + 184, legend_y), f"OpenVINO {ov_median:.3f} s/step ({speedup:.2f}x)", fill=INK, font=font)

    # Right: where the two final latents differ.
    diff, peak = difference_map(ov_latent, torch_latent, side)
    x0 = width - side - 30
    canvas.paste(diff, (x0, top))
    pen.rectangle([x0 - 1, top - 1, x0 + side, top + side], outline=INK)
    pen.text((x0, top - 22), "|OpenVINO - torch|, final latent", fill=INK, font=font)
    pen.text((x0, top + side + 6), f"white = {peak:.1e}; rel L2 {rel_l2:.1e}", fill=INK, font=font)
    pen.text((x0, top + side + 22), "(black everywhere: identical)", fill=INK, font=font)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
