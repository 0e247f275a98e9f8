"""An INT8 VAE decoder: NNCF's post-training quantization (weights and activations of every
convolution) of a VAE entry's FP32 decoder, calibrated on latents the host's sampler made, its
fidelity measured against the host's own (torch) decode of the same latents.

Why: once the UNet is fast, the decoder is a third of a 20-step 512² picture and half of a 4-step
one. Measured on an AMD EPYC (Zen 4, AVX512-VNNI/BF16, 2 threads), SD's decoder at 512² with
seeded random weights: f32 12.9 s, bf16 6.4 s, INT8 4.0 s (the float parts at f32 or bf16 alike)
at 33 dB to the f32 picture; NNCF took 42 s on 8 latents at 256². Quantizing activations is
what pays on a CPU: INT8 weights alone are decompressed to float for a convolution.

The INT8 decoder is an entry of its own beside the FP32 VAE entry (same name and hash, component
"vae", recipe INT8 full), and a user who wants the float decoder back sets the VAE precision to
f32 or bf16. Given the host's pictures of those latents, the entry holds an INT8 encoder too
(the encodes a host makes while it serves, e.g. hires fix's), calibrated on those pictures and
measured as the float decoder's pictures of its latents against those of the float encoder's
latents; one that moves the picture more than `ENCODER_MIN_PSNR_DB` allows is not kept (the float
encoder encodes, the report says why).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..graphs.export import save_ir
from ..progress import ProgressFn, silent
from ..runtime.compress import _nncf
from ..runtime.memory import mapped_file_released
from ..runtime.ov_core import compile_properties, get_core
from ..runtime.vae import COMPONENT, DECODER_IR, ENCODER_IR
from ..store import cache, fs
from ..store.recipe import Recipe
from . import metrics

INT8_DECODER_RECIPE = Recipe(int8="full")
# An INT8 encoder further than this from the float one is not kept. In the real webui, calibrated
# on two 256² pictures, it measured 26.3 dB (the decoder 38.7): a picture img2img starts from
# should not move that far without the user asking.
ENCODER_MIN_PSNR_DB = 30.0


def int8_decoder_key(vae_entry: cache.CacheEntry) -> cache.EntryKey:
    manifest = vae_entry.manifest
    return cache.EntryKey(manifest.checkpoint_name, manifest.checkpoint_hash, INT8_DECODER_RECIPE, COMPONENT)


def find_int8_decoder(vae_entry: cache.CacheEntry) -> cache.CacheEntry | None:
    """The INT8 decoder Optimize made of this VAE entry, if any (a damaged one counts as none)."""
    entry, _ = cache.find(vae_entry.path.parent.parent, int8_decoder_key(vae_entry))
    return entry


def _pictures(decoded: np.ndarray) -> np.ndarray:
    """A decoder's output [B, 3, H, W] in -1..1 as the webui's 8-bit pixels."""
    return (255 * np.clip((decoded.astype(np.float32) + 1) / 2, 0, 1)).astype(np.uint8)


def decoder_psnr(
    decoder_ir: Path, latents: Sequence[np.ndarray], references: Sequence[np.ndarray], device: str = "CPU"
) -> float:
    """The lowest PSNR (dB, 8-bit pixels) of `decoder_ir`'s pictures of `latents` against
    `references` (the host's decode of the same latents, [B, 3, H, W] in -1..1), at f32."""
    core = get_core()
    compiled = core.compile_model(str(decoder_ir), device, compile_properties(device, "f32", None))
    worst = math.inf
    for latent, reference in zip(latents, references, strict=True):
        out = compiled.create_infer_request().infer({0: latent})[0]
        worst = min(worst, metrics.psnr(_pictures(out), _pictures(reference)))
    return worst


def encoder_psnr(
    encoder_ir: Path, vae_entry: cache.CacheEntry, pictures: Sequence[np.ndarray], device: str = "CPU"
) -> float:
    """The lowest PSNR (dB, 8-bit pixels) of the FP32 decoder's pictures of `encoder_ir`'s latent
    means against its pictures of the FP32 encoder's (`vae_entry`'s), at f32: what an encoder's
    error does to the picture img2img starts from."""
    core = get_core()
    properties = compile_properties(device, "f32", None)
    int8, fp32, decoder = (
        core.compile_model(str(ir), device, properties)
        for ir in (encoder_ir, vae_entry.ir_path("encoder"), vae_entry.ir_path("decoder"))
    )
    worst = math.inf
    for picture in pictures:
        decoded = []
        for encoder in (int8, fp32):
            moments = encoder.create_infer_request().infer({0: picture})[0]
            mean = np.ascontiguousarray(moments[:, : moments.shape[1] // 2])
            decoded.append(_pictures(decoder.create_infer_request().infer({0: mean})[0]))
        worst = min(worst, metrics.psnr(*decoded))
    return worst


def quantize_vae_decoder(
    vae_entry: cache.CacheEntry,
    latents: Sequence[np.ndarray],
    references: Sequence[np.ndarray] = (),
    device: str = "CPU",
    progress: ProgressFn = silent,
    encoder_min_psnr_db: float = ENCODER_MIN_PSNR_DB,
) -> cache.CacheEntry:
    """Write the INT8 decoder entry of `vae_entry` (replacing an earlier one), calibrated on
    `latents` (what the VAE's `decode` was given: [1, C, h, w] float32, any sizes); with
    `references` (the host's pictures of those latents) its fidelity goes into the manifest's
    report, and an INT8 encoder calibrated on those pictures joins it. The FP32 entry is only
    read."""
    if not latents:
        raise ValueError("the INT8 VAE decoder is calibrated on latents: none were captured")
    nncf = _nncf()
    samples = [np.ascontiguousarray(latent, dtype=np.float32) for latent in latents]
    pictures = [np.ascontiguousarray(picture, dtype=np.float32) for picture in references]

    def quantized(model_name: str, data: list[np.ndarray], target: Path) -> None:
        fp32_ir = vae_entry.ir_path(model_name)
        with mapped_file_released(fp32_ir.with_suffix(".bin")):
            model = get_core().read_model(str(fp32_ir))
            save_ir(nncf.quantize(model, nncf.Dataset(data), subset_size=len(data)), target)

    def build(folder: Path) -> dict:
        started = time.perf_counter()
        progress(f"quantizing the VAE decoder (INT8, {len(samples)} latents)", 0.0)
        quantized("decoder", samples, folder / DECODER_IR)
        models = {"decoder": DECODER_IR}
        if pictures:
            progress(f"quantizing the VAE encoder (INT8, {len(pictures)} pictures)", 0.4)
            quantized("encoder", pictures, folder / ENCODER_IR)
            models["encoder"] = ENCODER_IR
        seconds = time.perf_counter() - started
        report = {"label": "INT8 VAE decoder", "device": device, "optimize_s": seconds}
        if pictures:
            progress("measuring the INT8 VAE decoder against the torch VAE's pictures", 0.7)
            report["psnr_db"] = decoder_psnr(folder / DECODER_IR, samples, pictures, device)
            progress("measuring the INT8 VAE encoder against the float encoder", 0.85)
            encoder_db = encoder_psnr(folder / ENCODER_IR, vae_entry, pictures, device)
            report["encoder_psnr_db"] = encoder_db
            if encoder_db >= encoder_min_psnr_db:
                report["label"] = "INT8 VAE decoder and encoder"
            else:  # not kept: the float encoder encodes
                del models["encoder"]
                for path in (folder / ENCODER_IR, (folder / ENCODER_IR).with_suffix(".bin")):
                    fs.remove_file(path)
                report["label"] = (
                    f"INT8 VAE decoder (encoder float: INT8 {encoder_db:.1f} dB < {encoder_min_psnr_db:g})"
                )
        progress(f"{report['label']} done", 1.0)
        return {
            "models": models,
            "timings": {"quantize_s": seconds},
            "calibration": {"samples": len(samples)},
            "report": cache.Report(**report),
        }

    root = vae_entry.path.parent.parent
    key = int8_decoder_key(vae_entry)
    with cache.entry_lock(root, key, progress):
        return cache.write(root, key, build, ir_name=DECODER_IR)
