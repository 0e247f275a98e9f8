"""SDXL's two text encoders at full size: torch vs OpenVINO FP32 vs OpenVINO INT8 weights.

Question it answers: what does moving SDXL's prompt encoding to OpenVINO cost and save — seconds
per prompt chunk, resident memory of each encoder, the IR on disk, and how close INT8 weights
stay to torch? CLIP-L (transformers CLIPTextModel, 123 M parameters) reads its raw penultimate
layer; OpenCLIP ViT-bigG's text tower (open_clip, 694 M) its raw penultimate layer and the pooled,
projected end token — the layers the webui's SDXL wrappers read. Seeded random weights (speed and
memory don't depend on the values; fidelity is to torch on the same weights).

Each encoder's phases run one after another in one process: torch encode (median of --calls
after a warm-up), export (FP32, then INT8 weights), OpenVINO FP32 and INT8 encode (each compiled,
warmed up, then timed), with RSS and the PSS of the OpenVINO model after each. Fidelity: PSNR of
OpenVINO's output against torch's over torch's peak-to-peak range.

Needs sgm/open_clip only for OpenCLIP (the webui's venv), e.g.:

    PYTHONPATH=<webui>/repositories/generative-models <webui>/venv/bin/python bench/sdxl_text_encoders.py
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sd_ov.runtime import text_encoder  # noqa: E402
from sd_ov.runtime.memory import rss_mib, trim_heap  # noqa: E402


def cpu_name() -> str:
    """The CPU as OpenVINO names it (Windows and Linux alike)."""
    from sd_ov.runtime.ov_core import get_core

    return str(get_core().get_property("CPU", "FULL_DEVICE_NAME"))


def psnr(got: torch.Tensor, want: torch.Tensor) -> float:
    mse = float(((got.float() - want.float()) ** 2).mean())
    span = float(want.max() - want.min())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(span**2 / mse)).item()


def clip_l() -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    return CLIPTextModel(CLIPTextConfig(**text_encoder.CLIP_L_CONFIG)).eval()


def open_clip_bigg(layers: int = 32) -> torch.nn.Module:
    """open_clip's ViT-bigG-14 text tower (the config SDXL's FrozenOpenCLIPEmbedder2 loads), with a
    tiny vision tower (sgm deletes it anyway). Fewer `layers` for smoke tests."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    model = CLIP(
        embed_dim=1280,
        vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=16),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=1280, heads=20, layers=layers),
    )
    del model.visual
    return model.eval()


def timed(fn, calls: int) -> tuple[float, object]:
    out = fn()  # warm-up (compiles on first use)
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), out


def measure(name: str, module: torch.nn.Module, kind: str, skip: int, cache: Path, calls: int) -> dict:
    row: dict = {"encoder": name, "parameters_M": round(sum(p.numel() for p in module.parameters()) / 1e6, 1)}
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, 49000, (1, 77), generator=gen)
    tokens[0, 40] = 49407  # the end token
    with torch.no_grad():
        embeds = text_encoder.token_embedding(module)(tokens)
    eot = tokens.argmax(-1) if kind == "open_clip" else None

    def torch_encode():
        with torch.no_grad():
            if kind == "open_clip":
                x = (embeds + module.positional_embedding).permute(1, 0, 2)
                outs = []
                for block in module.transformer.resblocks:
                    x = block(x, attn_mask=module.attn_mask)
                    outs.append(x.permute(1, 0, 2))
                last = module.ln_final(outs[-1])
                return outs[-skip], last[torch.arange(1), eot] @ module.text_projection
            hidden = module(input_ids=tokens, output_hidden_states=True).hidden_states
            return hidden[-skip], None

    row["torch_s"], (want, want_pooled) = timed(torch_encode, calls)
    for label, int8 in (("fp32", False), ("int8w", True)):
        started = time.perf_counter()
        entry = text_encoder.prepare_text_encoder_entry(
            module, cache, name, "bench", kind=kind, int8_weights=int8
        )
        row[f"{label}_export_s"] = round(time.perf_counter() - started, 1)
        row[f"{label}_ir_GB"] = round(entry.xml_path.with_suffix(".bin").stat().st_size / 1e9, 2)
        gc.collect()
        trim_heap()
        before = rss_mib()
        ov = text_encoder.OVTextEncoder(entry, cache_compiled=False)
        row[f"{label}_s"], (got, pooled) = timed(lambda ov=ov: ov.encode(embeds, skip, eot), calls)
        row[f"{label}_rss_added_GB"] = round((rss_mib() - before) / 1024, 2)
        row[f"{label}_psnr_dB"] = round(psnr(got, want), 1)
        if pooled is not None:
            row[f"{label}_pooled_psnr_dB"] = round(psnr(pooled, want_pooled), 1)
        ov.release()
        del ov
        gc.collect()
        trim_heap()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--only", choices=("clip_l", "bigg"), default=None)
    args = parser.parse_args()
    cache = args.cache or Path(tempfile.mkdtemp(prefix="sd-ov-te-bench-"))
    rows = []
    try:
        if args.only in (None, "clip_l"):
            rows.append(measure("clip-l", clip_l(), "clip_hidden", 2, cache, args.calls))
            gc.collect()
        if args.only in (None, "bigg"):
            rows.append(measure("openclip-bigg", open_clip_bigg(), "open_clip", 2, cache, args.calls))
    finally:
        if args.cache is None:
            shutil.rmtree(cache, ignore_errors=True)
    print(
        json.dumps(
            {
                "cpu": platform.processor() or platform.machine(),
                "threads": torch.get_num_threads(),
                "rows": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
