"""SDXL at full size, the whole picture: torch vs OpenVINO FP32 vs INT8 vs INT8 + DeepCache, side by
side in one run, with each serving process's peak and steady memory.

Question it answers (issue #23): on a 16 GB machine, how much faster is a whole SDXL txt2img at
1024² (both text encoders for prompt and negative prompt, Euler with CFG: one batch-2 UNet call
per step with the vector conditioning y, the VAE decode), how far is its picture from torch's,
and does the process that serves it stay under 8 GiB (`lowvram` under 6)?

The models are sd_xl_base.yaml's at full size with seeded random weights: the sgm UNet (2.6 G
parameters), CLIP-L (transformers), OpenCLIP ViT-bigG's text tower (open_clip) and the VAE. Random
weights: speed and memory don't depend on the values; PSNR is fidelity to torch on the same
weights, not picture quality.

One run, two kinds of process:
1. This process: builds the models (the UNet also written to a safetensors checkpoint, as a webui
   loads it, so Optimize can free and restore it as inside the webui), makes torch's picture
   (timed, its peak = torch alone), exports the text encoders (FP32 and INT8 weights) and the VAE,
   then Optimize makes the INT8 hybrid recipe and its DeepCache pair (calibrated on this prompt's
   conditioning at --calibration-size) from the FP32 export; Optimize's time and peak are reported.
2. One fresh process per OpenVINO configuration and memory mode (`--serve`): only OpenVINO models
   in it, as a webui with sd-ov's `release` would hold them. A warm-up picture compiles every
   model (imports its blob); then the peak is reset and the timed picture runs. `release`: every
   model stays compiled and gives its buffers back after its phase (`release_memory`); `lowvram`:
   each model is compiled (imported from its blob) before its phase and dropped after it.
   The FP32 configuration serves FP32 text encoders; the INT8 ones the INT8-weights encoders.

Peaks are VmHWM (Linux: reset through /proc/self/clear_refs), RSS after = after the picture.
sgm and open_clip ship with the webui, not on PyPI: run with the webui's venv (with sd-ov's
requirements), e.g. (about an hour on 2 cores, 23 GiB; ~45 GB of disk in --work):

    PYTHONPATH=<webui>/repositories/generative-models:<webui>/repositories/stable-diffusion-stability-ai \
        <webui>/venv/bin/python bench/sdxl.py --size 1024 --steps 6 --work /tmp/sd-ov-sdxl

`--reuse --runs ""` then times torch's picture again with the same entries and prints the table
with the rows served before (for a torch figure taken on a quiet machine); `--prepared <json>
--runs <config:mode,...>` serves only those again, against the torch row of that earlier run's
`--json` (after a change to serving).
"""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))

from sdxl_text_encoders import clip_l, open_clip_bigg  # noqa: E402

from sd_ov.constants import CHECKPOINT_UNET_PREFIX  # noqa: E402
from sd_ov.graphs.deepcache import DeepCacheConfig  # noqa: E402
from sd_ov.graphs.ldm_unet import randomize_zero_init  # noqa: E402
from sd_ov.optimize import metrics  # noqa: E402
from sd_ov.optimize.calibration import CapturingUNet  # noqa: E402
from sd_ov.optimize.pair import optimize_with_deepcache  # noqa: E402
from sd_ov.optimize.sampling import sample_euler  # noqa: E402
from sd_ov.runtime.memory import trim_heap  # noqa: E402
from sd_ov.runtime.text_encoder import OVTextEncoder, prepare_text_encoder_entry, token_embedding  # noqa: E402
from sd_ov.runtime.torch_weights import CheckpointTensors, ModuleWeights  # noqa: E402
from sd_ov.runtime.vae import SD_DDCONFIG, AutoencoderParts, OVVae, prepare_vae_entry, vae_precision  # noqa: E402
from sd_ov.serve import engine
from sd_ov.serve.preset import preset_precision  # noqa: E402
from sd_ov.store import cache
from sd_ov.store.recipe import Recipe  # noqa: E402

# generative-models' configs/inference/sd_xl_base.yaml, network_config (attention as SDPA)
SDXL_BASE = dict(
    adm_in_channels=2816,
    num_classes="sequential",
    use_checkpoint=False,
    in_channels=4,
    out_channels=4,
    model_channels=320,
    attention_resolutions=[4, 2],
    num_res_blocks=2,
    channel_mult=[1, 2, 4],
    num_head_channels=64,
    use_spatial_transformer=True,
    use_linear_in_transformer=True,
    transformer_depth=[1, 2, 10],
    context_dim=2048,
    spatial_transformer_attn_type="softmax",
    legacy=False,
)
# --tiny: the same interfaces (context 2048, y 2816) with a small UNet and a 2-layer OpenCLIP-G, to
# check the script in minutes
TINY_UNET = {**SDXL_BASE, "model_channels": 64, "transformer_depth": [1, 1, 1]}
SCALE = 0.13025  # SDXL's latent scale
END_TOKEN = 49407
NAME, KEY = "sdxl-base-random", "seed0"  # the weights are the seed's: no need to hash 10 GB
INT8 = Recipe(int8="hybrid")
# configuration: (UNet entry, UNet precision, text encoders, VAE precision); "preset" = the fastest
# preset's precision on this CPU (bf16 where it runs faster than f32), "auto" = sd-ov's VAE default
CONFIGS = {
    "fp32": ("fp32", "f32", "fp32", "f32"),
    "int8": ("int8", "f32", "int8w", "auto"),
    "int8+dc": ("int8+dc", "f32", "int8w", "auto"),
    "fastest": ("int8+dc", "preset", "int8w", "auto"),
}
MODES = ("release", "lowvram")
RUNS = "fp32:release,int8:release,int8+dc:release,int8+dc:lowvram,fastest:release,fastest:lowvram"


def vm(field: str) -> float:
    """A /proc/self/status field in GiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    return 0.0


def reset_peak() -> None:
    gc.collect()
    trim_heap()
    Path("/proc/self/clear_refs").write_text("5")


def cpu_name() -> str:
    """The CPU as OpenVINO names it."""
    from sd_ov.runtime.ov_core import get_core

    return str(get_core().get_property("CPU", "FULL_DEVICE_NAME"))


def to_pixels(decoded: torch.Tensor) -> np.ndarray:
    """The webui's conversion of a decoded picture: [-1, 1] → uint8 HWC."""
    return ((decoded[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def size_embedding(size: int) -> torch.Tensor:
    """sd_xl_base's vector conditioning after the pooled text: original size, crop (0, 0) and target
    size, each scalar as a 256-wide timestep embedding (sgm's ConcatTimestepEmbedderND)."""
    from sgm.modules.diffusionmodules.util import timestep_embedding

    values = torch.tensor([size, size, 0, 0, size, size], dtype=torch.float32)
    return timestep_embedding(values, 256).reshape(1, -1)


def prompt_tokens(seed: int) -> torch.Tensor:
    """Prompt and negative prompt as token ids (random words, then the end token, then padding)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 49000, (2, 77), generator=gen)
    for row, end in enumerate((30, 6)):
        ids[row, end] = END_TOKEN
        ids[row, end + 1 :] = END_TOKEN  # CLIP-L pads with the end token (the webui's SDXL CLIP-L)
    return ids


def torch_clip_l(module, ids: torch.Tensor) -> torch.Tensor:
    return module(input_ids=ids, output_hidden_states=True).hidden_states[-2]  # raw penultimate layer


def torch_bigg(module, embeds: torch.Tensor, eot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sgm FrozenOpenCLIPEmbedder2's penultimate layer and pooled, projected end token."""
    batch_first = bool(getattr(module.transformer, "batch_first", False))  # open_clip ≥ 2.24

    def swap(x: torch.Tensor) -> torch.Tensor:
        return x if batch_first else x.permute(1, 0, 2)

    x = swap(embeds + module.positional_embedding)
    blocks = module.transformer.resblocks
    for block in blocks[:-1]:
        x = block(x, attn_mask=module.attn_mask)
    penultimate = swap(x)
    last = module.ln_final(swap(blocks[-1](x, attn_mask=module.attn_mask)))
    return penultimate, last[torch.arange(last.shape[0]), eot] @ module.text_projection


def conditioning(hidden_l, hidden_g, pooled, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(context [2, 77, 2048], y [2, 2816]) for prompt and negative prompt."""
    sizes = size_embedding(size).expand(pooled.shape[0], -1)
    return torch.cat([hidden_l, hidden_g], dim=-1), torch.cat([pooled, sizes], dim=-1)


def with_y(unet, y: torch.Tensor):
    """The sampler's UNet call with SDXL's vector conditioning (cond, uncond rows)."""

    def call(x, t, context):
        return unet(x, t, context, y)

    return call


def sample(unet, noise, context, y, steps: int):
    return sample_euler(with_y(unet, y), noise, context[:1], context[1:], steps=steps)


# -- process 1: torch's picture and the cache entries ------------------------------------------------


def build_unet(work: Path, tiny: bool) -> tuple[torch.nn.Module, Path]:
    """The sgm UNet with seeded weights, and its checkpoint file (written once)."""
    from sgm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(0)
    unet = randomize_zero_init(UNetModel(**(TINY_UNET if tiny else SDXL_BASE)).eval(), seed=0)
    checkpoint = work / f"sdxl-{'tiny' if tiny else 'base'}-random-unet.safetensors"
    if not checkpoint.exists():
        partial = checkpoint.with_suffix(".partial")
        write_safetensors(unet.state_dict(), CHECKPOINT_UNET_PREFIX, partial)
        partial.replace(checkpoint)
    return unet, checkpoint


def write_safetensors(tensors: dict[str, torch.Tensor], prefix: str, path: Path) -> None:
    """A safetensors file written one tensor at a time (`safetensors.torch.save_file` copies every
    tensor to bytes first: another 10 GB beside SDXL's UNet)."""
    header, offset = {}, 0
    for name, tensor in tensors.items():
        size = tensor.numel() * 4  # written as f32
        span = [offset, offset + size]
        header[prefix + name] = {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": span}
        offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with path.open("wb") as out:
        out.write(len(encoded).to_bytes(8, "little") + encoded)
        for tensor in tensors.values():
            out.write(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())


def prepare(args, log) -> dict:
    work: Path = args.work
    root = work / "cache"
    rows: dict[str, dict] = {}

    def phase(name: str, started: float, **extra) -> None:
        rows[name] = {"s": round(time.perf_counter() - started, 1), "peak_gib": round(vm("VmHWM"), 2)}
        rows[name].update(extra, rss_after_gib=round(vm("VmRSS"), 2))
        log(f"{name}: {rows[name]}")

    reset_peak()
    started = time.perf_counter()
    unet, checkpoint = build_unet(work, args.tiny)
    te_l, te_g, vae = clip_l(), open_clip_bigg(2 if args.tiny else 32), AutoencoderParts(SD_DDCONFIG)
    phase("build (UNet, CLIP-L, OpenCLIP-G, VAE)", started)

    ids = prompt_tokens(1)
    eot = ids.argmax(-1)  # open_clip pools at the (first) highest id: the end token
    gen = torch.Generator().manual_seed(2)
    side = args.size // 8
    noise = torch.randn(1, 4, side, side, generator=gen)
    with torch.no_grad():
        embeds_l = token_embedding(te_l)(ids)
        embeds_g = token_embedding(te_g)(ids)

    reset_peak()
    started = time.perf_counter()
    with torch.no_grad():
        hidden_l = torch_clip_l(te_l, ids)
        hidden_g, pooled = torch_bigg(te_g, embeds_g, eot)
        context, y = conditioning(hidden_l, hidden_g, pooled, args.size)
        text_s = time.perf_counter() - started
        result = sample(unet, noise, context, y, args.steps)
        vae_started = time.perf_counter()
        image = to_pixels(vae.decode(result.latent / SCALE))
        vae_s = time.perf_counter() - vae_started
    phase(
        "torch picture",
        started,
        text_s=round(text_s, 2),
        unet_s=round(sum(result.step_seconds), 1),
        vae_s=round(vae_s, 1),
    )
    torch.save(
        {"embeds_l": embeds_l, "embeds_g": embeds_g, "eot": eot, "noise": noise, "context": context, "y": y},
        work / "inputs.pt",
    )
    np.save(work / "torch.npy", image)

    reset_peak()
    started = time.perf_counter()
    entries = {}
    for label, int8 in (("fp32", False), ("int8w", True)):
        entries[f"clip_l-{label}"] = prepare_text_encoder_entry(
            te_l, root, NAME + "-clip-l", KEY, kind="clip_hidden", int8_weights=int8
        )
        entries[f"bigg-{label}"] = prepare_text_encoder_entry(
            te_g, root, NAME + "-bigg", KEY, kind="open_clip", int8_weights=int8
        )
    entries["vae"] = prepare_vae_entry(vae, root, NAME + "-vae", KEY)
    del te_l, te_g, vae
    phase("export text encoders (FP32, INT8 weights) and VAE", started)

    reset_peak()
    started = time.perf_counter()
    calibration = args.calibration_size // 8

    def capture(runtime, progress) -> list:
        """Calibration as the webui's Optimize makes it: pictures of the prompt, here at a smaller size."""
        capturing = CapturingUNet(runtime)
        for seed in range(args.calibration_pictures):
            progress(f"calibration picture {seed + 1}", seed / args.calibration_pictures)
            gen = torch.Generator().manual_seed(10 + seed)
            start = torch.randn(1, 4, calibration, calibration, generator=gen)
            sample(capturing, start, context, y, args.calibration_steps)
        return capturing.samples

    keys = {"int8": INT8, "int8+dc": INT8.with_deepcache(args.branch), "fp32": Recipe()}
    found = {label: cache.find(root, cache.EntryKey(NAME, KEY, recipe))[0] for label, recipe in keys.items()}
    if args.reuse and all(found.values()):  # made by an earlier run of the same weights
        entries.update(found)
        phase("Optimize: reused from an earlier run", started)
        return {"rows": rows, "entries": {label: str(entry.path) for label, entry in entries.items()}}
    weights = ModuleWeights(unet, CheckpointTensors(checkpoint, CHECKPOINT_UNET_PREFIX))
    made = optimize_with_deepcache(
        unet,
        root,
        NAME,
        KEY,
        INT8,
        capture,
        deepcache_branch=args.branch,
        measure=None,
        torch_weights=weights,
        progress=lambda text, _fraction: log(f"  optimize: {text}"),
        keep_fp32=True,
    )
    entries["int8"], entries["int8+dc"] = made
    entries["fp32"] = cache.find(root, cache.EntryKey(NAME, KEY, Recipe()))[0]
    phase("Optimize: FP32 export, INT8 hybrid + its DeepCache pair", started)
    del unet, weights
    return {
        "rows": rows,
        "entries": {label: str(entry.path) for label, entry in entries.items()},
    }


# -- process 2: one OpenVINO configuration, one memory mode ------------------------------------------


def serve(args) -> dict:
    """One OpenVINO picture in this (fresh) process: a warm-up picture, then the timed one."""
    spec = json.loads((args.work / "entries.json").read_text())
    inputs = torch.load(args.work / "inputs.pt")
    config, mode = args.serve, args.mode
    unet_label, unet_precision, te, vae_choice = CONFIGS[config]
    if unet_precision == "preset":
        unet_precision = preset_precision("CPU")
    clip = OVTextEncoder(cache.validate(Path(spec[f"clip_l-{te}"])))
    bigg = OVTextEncoder(cache.validate(Path(spec[f"bigg-{te}"])))
    vae = OVVae(cache.validate(Path(spec["vae"])), precision=vae_precision("CPU", vae_choice))
    entry = cache.validate(Path(spec[unet_label]))
    branch = entry.manifest.recipe.deepcache_branch
    dc = branch is not None
    deepcache = DeepCacheConfig(args.interval, branch, "non-uniform") if dc else None
    if dc:
        unet = engine.open_deepcache(entry, deepcache, precision=unet_precision)
    else:
        unet = engine.open_unet(entry, precision=unet_precision)
    unet_parts = (unet.full, unet.shallow) if dc else (unet,)
    for part in unet_parts if args.split_batch else ():  # cond and uncond as two calls
        part.max_batch = 1

    def after_phase(*done) -> None:
        for part in done:
            if mode == "lowvram":
                part.drop_compiled()
            else:
                part.release_memory()
        gc.collect()
        trim_heap()

    peaks: dict[str, float] = {}  # each phase's peak (VmHWM reset before it)

    def phase_peak(name: str) -> None:
        peaks[name] = max(peaks.get(name, 0.0), round(vm("VmHWM"), 2))
        reset_peak()

    def picture(steps: int) -> dict:
        started = time.perf_counter()
        hidden_l, _ = clip.encode(inputs["embeds_l"], skip=2)
        hidden_g, pooled = bigg.encode(inputs["embeds_g"], skip=2, eot=inputs["eot"])
        context, y = conditioning(hidden_l, hidden_g, pooled, args.size)
        text_s = time.perf_counter() - started
        after_phase(clip, bigg)
        phase_peak("text")
        if dc:
            unet.start(deepcache, steps)
        result = sample(unet, inputs["noise"], context, y, steps)
        unet_done = time.perf_counter()
        after_phase(*unet_parts)
        phase_peak("unet")
        pixels = to_pixels(vae.decode(result.latent / SCALE))
        vae_s = time.perf_counter() - unet_done
        after_phase(vae)
        phase_peak("vae")
        return {
            "picture_s": round(time.perf_counter() - started, 1),
            "text_s": round(text_s, 2),
            "unet_s": round(sum(result.step_seconds), 1),
            "vae_s": round(vae_s, 1),
            "pattern": "".join(unet.pattern) if dc else "",
            "precisions": f"UNet {unet_precision}, text encoders {te}, VAE {vae.precision}",
            "image": pixels,
        }

    started = time.perf_counter()
    picture(max(2, args.interval) if dc else 1)  # compiles every model
    warm_s = time.perf_counter() - started
    warm_peak = max(peaks.values())
    peaks.clear()
    row = picture(args.steps)
    row.update(
        warm_up_s=round(warm_s, 1),
        warm_up_peak_gib=round(warm_peak, 2),
        peak_gib=max(peaks.values()),
        phase_peaks_gib=dict(peaks),
        rss_after_gib=round(vm("VmRSS"), 2),
    )
    np.save(args.work / f"{config}-{mode}.npy", row.pop("image"))
    for part in (clip, bigg, unet, vae):
        part.release()
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=1024, help="picture side in px (latent = size / 8)")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--interval", type=int, default=3, help="DeepCache's interval (non-uniform schedule)")
    p.add_argument("--branch", type=int, default=0, help="DeepCache's branch of the pair Optimize makes")
    p.add_argument("--calibration-size", type=int, default=512)
    p.add_argument("--calibration-pictures", type=int, default=2)
    p.add_argument("--calibration-steps", type=int, default=4)
    p.add_argument("--runs", default=RUNS, help="configuration:mode pairs to serve, e.g. int8+dc:lowvram")
    p.add_argument("--work", type=Path, default=Path("/tmp/sd-ov-sdxl"))
    p.add_argument("--json", type=Path)
    p.add_argument("--tiny", action="store_true", help="small UNet and OpenCLIP-G: a smoke test")
    p.add_argument("--split-batch", action="store_true", help="the UNet's cond and uncond as two calls")
    p.add_argument("--reuse", action="store_true", help="the cache entries and served rows of an earlier run")
    p.add_argument(
        "--prepared",
        type=Path,
        help="an earlier run's --json: its torch row, picture and entries in --work; serve --runs only",
    )
    p.add_argument("--serve", choices=list(CONFIGS), help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.serve:
        print("SERVED " + json.dumps(serve(args)), flush=True)
        return 0

    def log(text: str) -> None:
        print(f"[sdxl {time.strftime('%H:%M:%S')}] {text}", flush=True)

    if args.prepared:  # torch's row and picture, and the entries, of an earlier run: serve only
        prepared = {"rows": json.loads(args.prepared.read_text())["prepare"]}
    else:
        prepared = prepare(args, log)
        (args.work / "entries.json").write_text(json.dumps(prepared["entries"], indent=1))
    gc.collect()
    trim_heap()
    reference = np.load(args.work / "torch.npy")
    torch_row = prepared["rows"]["torch picture"]
    torch_s = torch_row["s"]
    # Served rows persist in the work folder: `--reuse --runs ""` times torch again (say, on a quiet
    # machine) and prints the table with the rows served before (same weights, same entries).
    saved = args.work / "served.json"
    earlier = (args.reuse or args.prepared) and saved.exists()
    served: dict[str, dict] = json.loads(saved.read_text()) if earlier else {}
    for row in served.values():
        row["torch_over_this"] = round(torch_s / row["picture_s"], 2)
    for run in [r for r in args.runs.split(",") if r]:
        config, mode = run.split(":")
        log(f"serving {config} ({mode}) in a fresh process")
        command = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])]
        command += ["--serve", config, "--mode", mode]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("SERVED ")]
        if done.returncode != 0 or not lines:
            log(f"{config} ({mode}) failed: {done.stderr[-2000:]}")
            continue
        row = json.loads(lines[-1][len("SERVED ") :])
        image = np.load(args.work / f"{config}-{mode}.npy")
        row["psnr_db"] = round(metrics.psnr(image, reference), 1)
        row["torch_over_this"] = round(torch_s / row["picture_s"], 2)
        served[f"{config} ({mode})"] = row
        saved.write_text(json.dumps(served, indent=1))
        log(f"{config} ({mode}): {row}")

    lines = [
        f"# SDXL whole picture: {args.size}², {args.steps} Euler steps, CFG (UNet batch 2); DeepCache "
        f"interval {args.interval}, branch {args.branch}, non-uniform; calibration "
        f"{args.calibration_pictures} pictures x {args.calibration_steps} steps at {args.calibration_size}²",
        f"command: python bench/sdxl.py {shlex.join(argv if argv is not None else sys.argv[1:])}",
        f"CPU: {cpu_name()}, {torch.get_num_threads()} threads; torch {torch.__version__}",
        "",
        "| configuration | picture s | text enc. s | UNet s | VAE s | torch ÷ this | PSNR vs torch "
        "| peak GiB | RSS after GiB | full/shallow | precisions |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
        f"| torch | {torch_s:.1f} | {torch_row['text_s']:.1f} | {torch_row['unet_s']:.1f} "
        f"| {torch_row['vae_s']:.1f} | 1.00x | | {torch_row['peak_gib']:.2f} "
        f"| {torch_row['rss_after_gib']:.2f} | | f32 |",
    ]
    for label, row in served.items():
        calls = f"{row['pattern'].count('F')}/{row['pattern'].count('S')}" if row["pattern"] else ""
        lines.append(
            f"| {label} | {row['picture_s']:.1f} | {row['text_s']:.1f} | {row['unet_s']:.1f} "
            f"| {row['vae_s']:.1f} | {row['torch_over_this']:.2f}x | {row['psnr_db']:.1f} dB "
            f"| {row['peak_gib']:.2f} | {row['rss_after_gib']:.2f} | {calls} | {row['precisions']} |"
        )
    lines += ["", "preparing (this process): "]
    lines += [f"- {name}: {row}" for name, row in prepared["rows"].items()]
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"prepare": prepared["rows"], "served": served}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
