"""The TAESD decoder (madebyollin's tiny autoencoder: 3x3 convolutions, ReLU, nearest upsampling;
the webui's "VAE type for decode: TAESD" and its TAESD live previews) as an OpenVINO entry.

Why: TAESD is what users pick when the full VAE is too slow, and it decodes every live preview.
It is a plain `nn.Sequential`, so it traces as it is; the entry's manifest names it `decoder`,
and `vae.OVVae` serves it like the VAE's decoder (precision, NaN fallback, blob cache, memory).
Its weights are small (1.2 M parameters): they are hashed for the cache key and stay in memory.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import openvino as ov
import torch

from ..progress import ProgressFn, silent
from ..store import cache
from ..store.module_entry import prepare_module_entry
from .export import save_ir, trace_to_openvino

DECODER_IR = "taesd_decoder.xml"
COMPONENT = "taesd"


def latent_channels(decoder: torch.nn.Module) -> int:
    conv = next((m for m in decoder.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if conv is None:
        raise ValueError("the TAESD decoder has no convolution")
    return conv.in_channels


def export_taesd_decoder(decoder: torch.nn.Module, folder: Path, progress: ProgressFn = silent) -> dict:
    """Write the decoder's IR (batch and latent sides free) into `folder`; the manifest's fields."""
    started = time.perf_counter()
    progress("tracing the TAESD decoder", 0.0)
    if next(decoder.parameters()).dtype != torch.float32:  # f16 in some webuis: trace a f32 copy
        decoder = copy.deepcopy(decoder).float()
    channels = latent_channels(decoder)
    z = torch.randn(1, channels, 8, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model = trace_to_openvino(decoder, (z,))
    model.inputs[0].get_tensor().set_names({"z"})
    model.outputs[0].get_tensor().set_names({"out"})
    model.reshape({"z": ov.PartialShape([-1, channels, -1, -1])})
    save_ir(model, folder / DECODER_IR)
    progress("TAESD decoder exported", 1.0)
    return {"models": {"decoder": DECODER_IR}, "timings": {"export_s": time.perf_counter() - started}}


def prepare_taesd_entry(
    decoder: torch.nn.Module, cache_root: str | Path, name: str, progress: ProgressFn = silent
) -> cache.CacheEntry:
    """The cache entry of this TAESD decoder (keyed by its weights), exported when absent."""
    return prepare_module_entry(
        decoder,
        cache_root,
        name,
        COMPONENT,
        lambda folder: export_taesd_decoder(decoder, folder, progress),
        DECODER_IR,
        "TAESD decoder",
        progress,
    )
