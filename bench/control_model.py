"""ControlNet's control model per call on OpenVINO: f32, bf16, INT8 weights, INT8 hybrid, side by
side in one run, with each one's residuals against torch's.

Question (issue #24, item 4): does an INT8 control model pay, and which kind? The extension's own
cldm `ControlNet` class (SD1.5's layout, `controlnet_default_config`: 361 M parameters) with the
weights of a control model file (the real webui's test model has seeded random weights), the
trace sd-ov serves (`sd_ov.runtime.control_model`), NNCF as Optimize uses it
(`sd_ov.runtime.compress.compress_ir`:
"weights" needs no data, "hybrid" calibrates its convolutions' activations on the calibration
inputs below). Inputs: a denoising run's latents (noise at a sigma of the Euler schedule, scaled
as the webui's sampler gives them), a random smooth hint picture, random prompt embeddings;
calibration and measuring inputs differ. Fidelity: relative L2 of all residuals together against
torch f32 (random weights: fidelity to the float model, not picture quality).

    python bench/control_model.py --controlnet <webui>/extensions/sd-webui-controlnet \\
        --model <webui>/models/ControlNet/control_sd15_random.safetensors --work <folder>
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))

from unet_step import machine_info  # noqa: E402

from sd_ov.optimize.measure import median_call  # noqa: E402
from sd_ov.runtime.compress import compress_ir  # noqa: E402
from sd_ov.runtime.control_model import export_control_model  # noqa: E402
from sd_ov.runtime.ov_core import get_core  # noqa: E402

SD15_CONTROLNET = {  # sd-webui-controlnet's controlnet_default_config
    "in_channels": 4,
    "model_channels": 320,
    "hint_channels": 3,
    "num_res_blocks": 2,
    "attention_resolutions": [1, 2, 4],
    "transformer_depth": [1, 1, 1, 0],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,
    "context_dim": 768,
    "num_heads": 8,
    "global_average_pooling": False,
    "use_fp16": False,  # the extension sets it from the webui's UNet dtype: f32 with --no-half
}


def extension_control_model(extension: Path, weights: Path) -> torch.nn.Module:
    """The extension's cldm ControlNet with the file's weights; cldm imports the webui's `devices`
    only for its lowvram hooks, which a stand-in satisfies."""
    if "modules" not in sys.modules:
        modules = types.ModuleType("modules")
        modules.devices = types.ModuleType("modules.devices")
        sys.modules["modules"], sys.modules["modules.devices"] = modules, modules.devices
    sys.path.insert(0, str(extension))
    from scripts.cldm import ControlNet

    model = ControlNet(**SD15_CONTROLNET).float().eval()
    state = {k.removeprefix("control_model."): v.float() for k, v in load_file(weights).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise SystemExit(f"{weights} lacks {len(missing)} of the control model's weights, e.g. {missing[:3]}")
    return model


def inputs(seed: int, batch: int, size: int) -> dict[str, np.ndarray]:
    """One control-model call as the sampler makes it: noised latents at one of 20 Euler sigmas."""
    gen = torch.Generator().manual_seed(seed)
    sigmas = torch.linspace(14.6, 0.03, 20)
    step = int(torch.randint(0, 20, (1,), generator=gen))
    sigma = float(sigmas[step])
    latent = torch.randn(batch, 4, size // 8, size // 8, generator=gen)
    x = (latent * 0.8 + torch.randn(latent.shape, generator=gen) * sigma) / (sigma**2 + 1) ** 0.5
    coarse = torch.rand(1, 3, size // 32, size // 32, generator=gen)
    hint = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear").expand(
        batch, -1, -1, -1
    )
    timesteps = torch.full((batch,), float(999 * (1 - step / 19)))
    context = torch.randn(batch, 77, 768, generator=gen)
    return {
        "x": x.numpy(),
        "hint": hint.contiguous().numpy(),
        "timesteps": timesteps.numpy(),
        "context": context.numpy(),
    }


def rel_l2(outs: list[np.ndarray], refs: list[np.ndarray]) -> float:
    out = np.concatenate([o.ravel().astype(np.float64) for o in outs])
    ref = np.concatenate([r.ravel().astype(np.float64) for r in refs])
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


NAMES = ("x", "hint", "timesteps", "context")


def torch_reference(model: torch.nn.Module, measured: list[dict], calls: int) -> tuple[float, list]:
    """Torch's seconds per call and its residuals for each measuring input."""
    with torch.no_grad():
        first = tuple(torch.from_numpy(measured[0][n]) for n in NAMES)
        seconds, _ = median_call(lambda *a: model(*a), first, calls)
        refs = [[o.numpy() for o in model(*(torch.from_numpy(m[n]) for n in NAMES))] for m in measured]
    return seconds, refs


def measure_ir(
    xml: Path, precision: str, measured: list[dict], refs: list, calls: int
) -> tuple[float, float]:
    """Seconds per call of the IR compiled at `precision`, and its worst relative L2 against torch."""
    compiled = get_core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": precision})
    request, outputs = compiled.create_infer_request(), len(compiled.outputs)

    def call(m):
        request.infer(m)
        return [request.get_output_tensor(i).data.copy() for i in range(outputs)]

    seconds, _ = median_call(call, (measured[0],), calls)
    return seconds, max(rel_l2(call(m), ref) for m, ref in zip(measured, refs, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--controlnet", type=Path, required=True, help="the sd-webui-controlnet folder")
    parser.add_argument("--model", type=Path, required=True, help="a SD1.5 control model (.safetensors)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/sd_ov_bench_control"))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2, help="2: cond and uncond in one call")
    parser.add_argument("--samples", type=int, default=8, help="hybrid's calibration calls")
    parser.add_argument("--calls", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = extension_control_model(args.controlnet, args.model)
    params = sum(p.numel() for p in model.parameters())
    args.work.mkdir(parents=True, exist_ok=True)
    f32_ir = args.work / "control_model.xml"
    if not f32_ir.exists():
        export_control_model(model, args.work)
    made = {}
    calibration = [inputs(100 + i, 1, 256) for i in range(args.samples)]
    for mode in ("weights", "hybrid"):
        target = args.work / f"control_model.int8-{mode}.xml"
        if not target.exists():
            started = time.perf_counter()
            compress_ir(f32_ir, target, mode, calibration if mode == "hybrid" else ())
            made[mode] = round(time.perf_counter() - started, 1)
    measured = [inputs(seed, args.batch, args.size) for seed in (1, 2)]
    torch_s, refs = torch_reference(model, measured, max(1, args.calls - 2))
    del model
    rows = {"torch f32": {"s": round(torch_s, 3)}}
    variants = {
        "OpenVINO f32": (f32_ir, "f32"),
        "OpenVINO bf16": (f32_ir, "bf16"),
        "INT8 weights (bf16)": (args.work / "control_model.int8-weights.xml", "bf16"),
        "INT8 hybrid (bf16)": (args.work / "control_model.int8-hybrid.xml", "bf16"),
    }
    for label, (xml, precision) in variants.items():
        seconds, error = measure_ir(xml, precision, measured, refs, args.calls)
        ir_mb = round(xml.with_suffix(".bin").stat().st_size / 2**20)
        rows[label] = {"s": round(seconds, 3), "rel_l2": round(error, 4), "ir_mb": ir_mb}
    result = {
        "machine": machine_info(),
        "parameters_m": round(params / 1e6),
        "size": args.size,
        "batch": args.batch,
        "compress_s": made,
        "rows": rows,
    }
    print(json.dumps(result, indent=1))
    base = rows["OpenVINO bf16"]["s"]
    for label, row in rows.items():
        error = row.get("rel_l2", 0)
        print(f"{label:>22}: {row['s']:.3f} s/call ({base / row['s']:.2f}x bf16)  rel L2 {error:.4f}")


if __name__ == "__main__":
    main()
