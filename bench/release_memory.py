"""What OpenVINO's `CompiledModel.release_memory()` gives back: the SD1.5 VAE decoder (83.7 M
parameters, seeded random weights) at 512², RSS before and after a decode, after
`release_memory()`, and after a second decode (which must compile nothing).

    bash tools/run.sh python bench/release_memory.py [--size 512]
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import torch

from sd_ov.runtime.memory import rss_mib, trim_heap
from sd_ov.runtime.ov_core import device_full_name
from sd_ov.runtime.vae import SD_DDCONFIG, AutoencoderParts, OVVae, prepare_vae_entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    size = parser.parse_args().size
    vae = AutoencoderParts(SD_DDCONFIG, seed=0)
    entry = prepare_vae_entry(vae, Path(tempfile.mkdtemp()), "bench", "0" * 64)
    del vae
    gc.collect()
    trim_heap()
    decoder = OVVae(entry, cache_compiled=False)
    z = torch.randn(1, 4, size // 8, size // 8)
    before = rss_mib()
    started = time.perf_counter()
    decoder.decode(z)
    first_s = time.perf_counter() - started
    gc.collect()
    trim_heap()
    decoded = rss_mib()
    started = time.perf_counter()
    decoder.release_memory()
    trim_heap()
    release_s = time.perf_counter() - started
    released = rss_mib()
    started = time.perf_counter()
    decoder.decode(z)
    second_s = time.perf_counter() - started
    again = rss_mib()
    print(f"CPU: {device_full_name('CPU')}; VAE decoder at {size}x{size}, RSS in MiB")
    print(f"  before the first decode          {before:8.0f}")
    print(f"  after it (compile + decode {first_s:.1f} s) {decoded:8.0f}")
    given = decoded - released
    print(f"  after release_memory ({release_s * 1000:.0f} ms)     {released:8.0f}  ({given:.0f} given back)")
    print(f"  after a second decode ({second_s:.1f} s)     {again:8.0f}  compiles: {list(decoder.timings)}")


if __name__ == "__main__":
    main()
