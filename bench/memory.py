"""Memory and the parts around the UNet, SD1.5-sized with seeded random weights (speed and
resident memory do not depend on the values; fidelity is against torch on the same weights).

    python bench/memory.py vae      # VAE decode at 512²: torch vs OpenVINO, side by side
    python bench/memory.py release  # the torch UNet freed and read back from a checkpoint file
    python bench/memory.py picture  # a whole 512² txt2img per mode: peak and steady RSS, seconds

`picture` runs each mode in a fresh process: text encoder (CLIP-L, cond + uncond), `--steps`
Euler steps with CFG (one batch-2 UNet call per step), VAE decode. The peak is the process's
VmHWM from the picture's start (reset through /proc/self/clear_refs), so it is the picture's,
not the model loading's. Modes:
- torch: torch's text encoder, UNet (SDPA attention) and VAE;
- openvino-none: OpenVINO serves all three, torch's modules stay in memory beside it;
- openvino-release: OpenVINO serves, torch's weights are not held (what `release` leaves: their
  storages freed; the host keeps only the token embedding for its prompt lookup), and the text
  encoder's and VAE's compiled models live only for their phase, as in the webui;
- openvino-lowvram: as release, and the UNet's compiled model too;
- int8-release / int8-lowvram: the same with the INT8 hybrid UNet recipe.

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

from sd_ov.optimize import metrics  # noqa: E402
from sd_ov.runtime.memory import rss_mib  # noqa: E402
from sd_ov.serve.engine import weights_hash  # noqa: E402


def median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_vae(size: int, repeats: int) -> None:
    from sd_ov.runtime.vae import SD_DDCONFIG, AutoencoderParts, OVVae, prepare_vae_entry

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

    from sd_ov.graphs.ldm_unet import CHECKPOINT_UNET_PREFIX, build_unet, load_config
    from sd_ov.runtime.torch_weights import CheckpointTensors, ReleasedWeights

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


MODES = ("torch", "openvino-none", "openvino-release", "openvino-lowvram", "int8-release", "int8-lowvram")
INT8_RECIPE = {"int8": "hybrid", "samples": 8}


def torch_modules():
    """SD1.5-sized text encoder, UNet and VAE with seeded random weights."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from sd_ov.graphs.ldm_unet import build_unet, load_config
    from sd_ov.runtime.text_encoder import CLIP_L_CONFIG
    from sd_ov.runtime.vae import SD_DDCONFIG, AutoencoderParts

    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(**CLIP_L_CONFIG)).eval()
    return text, build_unet(load_config("sd15"), seed=0), AutoencoderParts(SD_DDCONFIG)


def prepare_entries(root: Path) -> dict:
    """Export the three models (and make the INT8 recipe) once; returns what opens them."""
    import json

    from sd_ov.graphs.ldm_unet import describe
    from sd_ov.optimize.calibration import random_prompt_capture
    from sd_ov.optimize.run import optimize
    from sd_ov.runtime.text_encoder import prepare_text_encoder_entry
    from sd_ov.runtime.vae import prepare_vae_entry
    from sd_ov.serve import engine
    from sd_ov.store.recipe import Recipe

    index = root / "entries.json"
    if index.exists():
        return json.loads(index.read_text())
    text, unet, vae = torch_modules()
    entries = {
        "text_encoder": str(prepare_text_encoder_entry(text, root, "bench-te", weights_hash(text)).path),
        "vae": str(prepare_vae_entry(vae, root, "bench-vae", weights_hash(vae)).path),
    }
    unet_hash = weights_hash(unet)
    entries["unet"] = str(engine.prepare_entry(unet, root, "bench", unet_hash).entry.path)
    print("making the INT8 hybrid recipe (calibration: 2 pictures x 4 steps at 256²)", flush=True)
    capture = random_prompt_capture(describe(unet), prompts=2, steps=4, size=(256, 256))
    entries["int8"] = str(
        optimize(unet, root, "bench", unet_hash, Recipe(**INT8_RECIPE), capture, measure=None).path
    )
    index.write_text(json.dumps(entries))
    return entries


def status_gib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def picture_in_this_process(mode: str, root: Path, steps: int, size: int) -> None:
    """One mode's picture (the child process of `bench_picture`); prints a JSON line."""
    import json

    from sd_ov.optimize.sampling import sample_euler
    from sd_ov.runtime.memory import trim_heap
    from sd_ov.runtime.text_encoder import OVTextEncoder
    from sd_ov.runtime.vae import OVVae
    from sd_ov.serve import engine
    from sd_ov.store import cache

    entries = json.loads((root / "entries.json").read_text())
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 49406, (2, 77), generator=gen)  # prompt and negative prompt, tokenized
    noise = torch.randn(1, 4, size // 8, size // 8, generator=gen)
    lowvram = mode.endswith("lowvram")
    if mode in ("torch", "openvino-none"):
        text, unet, vae = torch_modules()
        embedding = text.text_model.embeddings.token_embedding
    else:
        text = unet = vae = None
        embedding = torch.nn.Embedding(49408, 768)  # the host's own token lookup stays in torch
    if mode != "torch":
        te = OVTextEncoder(cache.validate(Path(entries["text_encoder"])))
        unet_entry = entries["int8" if mode.startswith("int8") else "unet"]
        ov_unet = engine.open_unet(cache.validate(Path(unet_entry)))
        ov_vae = OVVae(cache.validate(Path(entries["vae"])))
    trim_heap()
    Path("/proc/self/clear_refs").write_text("5")  # the peak from here on
    started = time.perf_counter()
    with torch.no_grad():
        if mode == "torch":
            from sd_ov.graphs.traceable_unet import traceable

            hidden = text(input_ids=ids).last_hidden_state
            with traceable(unet):
                latent = sample_euler(unet, noise, hidden[:1], hidden[1:], steps=steps).latent
            image = vae.decode(latent / 0.18215)
        else:
            hidden = te.hidden(embedding(ids))
            if mode != "openvino-none":  # as the webui adapter: compiled for its phase only
                te.release()
            latent = sample_euler(ov_unet, noise, hidden[:1], hidden[1:], steps=steps).latent
            if lowvram:
                ov_unet.drop_compiled()
                trim_heap()
            image = ov_vae.decode(latent / 0.18215)
            if mode != "openvino-none":
                ov_vae.release()
    seconds = time.perf_counter() - started
    trim_heap()
    print(
        json.dumps(
            {
                "mode": mode,
                "peak_gib": status_gib("VmHWM"),
                "after_gib": status_gib("VmRSS"),
                "seconds": seconds,
                "image_mean": float(image.mean()),
            }
        )
    )


def bench_picture(steps: int, size: int, modes: list[str], root: Path) -> None:
    import json
    import subprocess

    root.mkdir(parents=True, exist_ok=True)
    prepare_entries(root)
    print(f"| mode | peak RSS during the picture | RSS after | seconds ({size}², {steps} steps) |")
    print("|---|---:|---:|---:|")
    for mode in modes:
        done = subprocess.run(
            [sys.executable, __file__, "picture-child", "--mode", mode, "--cache", str(root),
             "--steps", str(steps), "--size", str(size)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"| {mode} | {row['peak_gib']:.2f} GiB | {row['after_gib']:.2f} GiB | {row['seconds']:.1f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["vae", "release", "picture", "picture-child"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", default="sd15")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--mode", choices=MODES)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "sd_ov_bench_picture")
    args = parser.parse_args()
    if args.what == "picture-child":
        picture_in_this_process(args.mode, args.cache, args.steps, args.size)
        return
    print(f"CPU: {cpu_name()}, torch threads {torch.get_num_threads()}")
    if args.what == "vae":
        bench_vae(args.size, args.repeats)
    elif args.what == "picture":
        bench_picture(args.steps, args.size, args.modes.split(","), args.cache)
    else:
        bench_release(args.config)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
