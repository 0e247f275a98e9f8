"""SD's VAE at 512² on OpenVINO: the decoder and the encoder (img2img's) at f32, bf16 and INT8,
side by side in one run, with the INT8 models' fidelity.

Question (issue #24, item 3): what does Optimize's INT8 VAE buy per picture, decode and encode,
and how far do its pictures move? SD's VAE with seeded random weights (`SD_DDCONFIG`), calibrated
as Optimize does in the webui: latents the sampler would decode (here: random latents at 256²,
scaled as SD's) for the decoder, the float decoder's pictures of them for the encoder. Fidelity:
the INT8 decoder's pictures against the f32 decoder's, and the f32 decoder's pictures of the
INT8 encoder's latents against those of the f32 encoder's (PSNR, 8-bit pixels, a 512² picture
not among the calibration ones). Random weights: fidelity to the float model, not picture quality.

    python bench/vae_int8.py --work <folder>     # about 10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))

from unet_step import machine_info  # noqa: E402

from sd_ov.optimize import metrics  # noqa: E402
from sd_ov.optimize.measure import median_call  # noqa: E402
from sd_ov.optimize.vae_int8 import find_int8_decoder, quantize_vae_decoder  # noqa: E402
from sd_ov.runtime.vae import SD_DDCONFIG, AutoencoderParts, OVVae, prepare_vae_entry  # noqa: E402
from sd_ov.serve import engine

SCALE = 0.18215  # SD1.x latent scale: what the webui's decode is given is latent / SCALE


def pixels(decoded: np.ndarray | torch.Tensor) -> np.ndarray:
    array = decoded.numpy() if isinstance(decoded, torch.Tensor) else decoded
    return (255 * np.clip((array.astype(np.float32) + 1) / 2, 0, 1)).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/sd_ov_bench_vae_int8"))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(2)
    vae = AutoencoderParts(SD_DDCONFIG).eval()
    entry = prepare_vae_entry(vae, args.work, "bench-vae", engine.weights_hash(vae))
    gen = torch.Generator().manual_seed(4)
    latents = [torch.randn(1, 4, 32, 32, generator=gen) / SCALE for _ in range(args.samples)]
    if find_int8_decoder(entry) is None:
        with torch.no_grad():
            pictures = [vae.decode(z).numpy() for z in latents]
        started = time.perf_counter()
        # the encoder kept whatever its PSNR: measured here, where Optimize keeps it only from 30 dB
        quantize_vae_decoder(entry, [z.numpy() for z in latents], pictures, encoder_min_psnr_db=0)
        print(f"INT8 VAE made in {time.perf_counter() - started:.0f} s", flush=True)
    int8_entry = find_int8_decoder(entry)
    side = args.size // 8
    z = torch.randn(1, 4, side, side, generator=gen) / SCALE
    with torch.no_grad():
        x = vae.decode(z).clamp(-1, 1)  # a picture to encode, not a calibration one
    rows, results = [], {}
    for name, kwargs in (
        ("f32", {"precision": "f32"}),
        ("bf16", {"precision": "bf16"}),
        ("int8", {"precision": "bf16", "decoder_entry": int8_entry}),
    ):
        served = OVVae(entry, cache_compiled=False, **kwargs)
        decode_s, decoded = median_call(served.decode, (z,), 3)
        encode_s, moments = median_call(served.encode, (x,), 3)
        results[name] = (decoded, moments)
        rows.append((name, decode_s, encode_s))
        served.release()
    reference_decoder = OVVae(entry, cache_compiled=False, precision="f32")
    decoded_f32, moments_f32 = results["f32"]
    print(
        f"# SD VAE at {args.size}², seeded random weights; INT8 calibrated on {args.samples} latents at 256²"
    )
    print(f"command: python bench/vae_int8.py {' '.join(sys.argv[1:])}")
    print(f"machine: {json.dumps(machine_info())}\n")
    print(
        "| VAE | decode s | encode s | decode PSNR vs f32 | encode PSNR vs f32 |\n|---|---:|---:|---:|---:|"
    )
    for name, decode_s, encode_s in rows:
        decoded, moments = results[name]
        of_latents = [reference_decoder.decode(m[:, :4]) for m in (moments, moments_f32)]
        decode_db = metrics.psnr(pixels(decoded), pixels(decoded_f32))
        encode_db = metrics.psnr(*(pixels(d) for d in of_latents))
        print(f"| {name} | {decode_s:.2f} | {encode_s:.2f} | {decode_db:.1f} dB | {encode_db:.1f} dB |")


if __name__ == "__main__":
    main()
