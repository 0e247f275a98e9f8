"""Memory and the parts around the UNet, SD1.5-sized with seeded random weights (speed and
resident memory do not depend on the values; fidelity is against torch on the same weights).

    python bench/memory.py vae      # VAE decode at 512²: torch vs OpenVINO, side by side
    python bench/memory.py release  # the torch UNet freed and read back from a checkpoint file

Run by hand (minutes, GBs); the tables are in the README with the CPU they were measured on.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sd_ov import metrics  # noqa: E402
from sd_ov.engine import weights_hash  # noqa: E402
from sd_ov.memory import rss_mib  # noqa: E402


def median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_vae(size: int, repeats: int) -> None:
    from sd_ov.vae import SD_DDCONFIG, AutoencoderParts, OVVae, prepare_vae_entry

    vae = AutoencoderParts(SD_DDCONFIG)
    z = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as root:
        entry = prepare_vae_entry(vae, root, "bench", weights_hash(vae))
        ov_vae = OVVae(entry, cache_compiled=False)
        with torch.no_grad():
            torch_out = vae.decode(z)
        ov_out = ov_vae.decode(z)  # compiles
        with torch.no_grad():
            torch_s = median_s(lambda: vae.decode(z), repeats)
        ov_s = median_s(lambda: ov_vae.decode(z), repeats)
        pixels_s = median_s(lambda: ov_vae.decode_to_pixels(z), repeats)

    def image(x: torch.Tensor):
        return (255 * torch.clamp((x[0] + 1) / 2, 0, 1)).permute(1, 2, 0).numpy().astype("uint8")

    psnr = metrics.psnr(image(ov_out), image(torch_out))
    print(
        f"| VAE decode {size}² | torch {torch_s:.2f} s | OpenVINO {ov_s:.2f} s ({torch_s / ov_s:.2f}x) "
        f"| OpenVINO to u8 pixels in the graph {pixels_s:.2f} s | PSNR {psnr:.1f} dB |"
    )


def bench_release(config: str) -> None:
    from safetensors.torch import save_file

    from sd_ov.ldm_unet import CHECKPOINT_UNET_PREFIX, build_unet, load_config
    from sd_ov.torch_weights import CheckpointTensors, ReleasedWeights

    unet = build_unet(load_config(config), seed=0)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        save_file(
            {CHECKPOINT_UNET_PREFIX + k: v.half().contiguous() for k, v in unet.state_dict().items()},
            str(path),
        )
        with torch.no_grad():  # as the webui holds it: the fp16 file cast to f32
            for p in unet.parameters():
                p.copy_(p.half().float())
        source = CheckpointTensors(path, CHECKPOINT_UNET_PREFIX)
        before = rss_mib()
        started = time.perf_counter()
        released = ReleasedWeights.release(unet, source)
        release_s = time.perf_counter() - started
        freed = before - rss_mib()
        started = time.perf_counter()
        released.restore()
        restore_s = time.perf_counter() - started
    print(
        f"| release {config} UNet | {released.freed_bytes / 2**30:.2f} GiB of weights "
        f"| RSS -{freed / 1024:.2f} GiB "
        f"| check + free {release_s:.1f} s | restore {restore_s:.1f} s |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["vae", "release"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", default="sd15")
    args = parser.parse_args()
    import platform

    print(f"CPU: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}")
    if args.what == "vae":
        bench_vae(args.size, args.repeats)
    else:
        bench_release(args.config)


if __name__ == "__main__":
    main()
