"""The fastest preset against the webui's torch, side by side in one fresh webui: the 20-step 512²
Euler txt2img (the API's whole request) on torch, on the preset (twice, after a 1-step warm-up),
and the 4-step LCM path at CFG 1 with an LCM-LoRA-shaped LoCon on the preset's recipe (twice).

Why beside `tests/real/test_webui_real.py -k five_times`: that test Optimizes three recipes in the
same webui process (43 minutes) and measures their jobs after it; this measures a user's fresh
start with the preset already made, in about 12 minutes. It uses the real tests' helpers and
settings (SD_OV_WEBUI_DIR, SD_OV_WEBUI_PYTHON) and links this checkout into the webui's
extensions while it runs. The preset must have been Optimized (the tab, the API, or that test).

    SD_OV_WEBUI_DIR=<webui> python bench/webui_side_by_side.py [--label "[OpenVINO ...] <checkpoint>"]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sd_ov.optimize.metrics import psnr  # noqa: E402
from sd_ov.serve.preset import FASTEST  # noqa: E402
from tests.real import test_webui_real as real  # noqa: E402

JOB = {"width": 512, "height": 512, "steps": 20}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--label", default="[OpenVINO BF16 INT8ff ToMe0.5] sd15-random", help="the preset's option"
    )
    parser.add_argument("--log", type=Path, default=Path("webui_side_by_side.log"))
    args = parser.parse_args()
    if not real.WEBUI:
        raise SystemExit("set SD_OV_WEBUI_DIR to the webui checkout")
    webui_dir = Path(real.WEBUI)
    link = webui_dir / "extensions" / "sd-ov-under-test"
    if link.exists() or link.is_symlink():
        raise SystemExit(f"{link} exists: remove it first (a real test may be running)")
    link.symlink_to(ROOT, target_is_directory=True)
    lora = webui_dir / "models" / "Lora" / "sdov-test-lcm.safetensors"
    real.write_lora(lora, rank=8, seed=7, strength=0.05, locon=True)
    preset = (FASTEST.deepcache.interval, FASTEST.deepcache.branch, FASTEST.deepcache.schedule)
    auto_vae = {**real.COMPANIONS, "sd_ov_vae_precision": "auto"}
    lcm = {
        **JOB,
        "steps": 4,
        "cfg_scale": 1,
        "sampler_name": "LCM",
        "prompt": real.JOB["prompt"] + " <lora:sdov-test-lcm:1>",
    }
    seconds, said = {}, {}
    webui = real.Webui(webui_dir, args.log)
    try:
        real.txt2img("None", job={**JOB, "steps": 1})  # first use loads what a first job loads
        torch_image, _, seconds["torch"] = real.txt2img("None", job=JOB)
        real.txt2img(args.label, deepcache=preset, job={**JOB, "steps": 1}, **auto_vae)  # compiles
        for i in range(2):
            image, said["fastest"], seconds[f"fastest {i + 1}"] = real.txt2img(
                args.label, deepcache=preset, job=JOB, **auto_vae
            )
        for i in range(2):  # the first also compiles the LoRA branch
            _, said["lcm"], seconds[f"lcm {i + 1}"] = real.txt2img(args.label, job=lcm, **auto_vae)
    finally:
        webui.stop()
        lora.unlink(missing_ok=True)
        link.unlink()
    print(json.dumps({"seconds": {k: round(v, 1) for k, v in seconds.items()}, "infotexts": said}, indent=1))
    for name, value in seconds.items():
        print(f"{name:>10}: {value:6.1f} s  torch ÷ this {seconds['torch'] / value:5.2f}x")
    print(f"the preset's picture against torch's: {psnr(image, torch_image):.1f} dB")


if __name__ == "__main__":
    main()
