"""The README's commands as a user runs them: the demo, and export of a single-file checkpoint."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import torch
from safetensors.torch import save_file

from ..conftest import MICRO


def run(*args, cwd):
    done = subprocess.run(
        [sys.executable, "-m", "sd_ov", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_demo_prints_both_timings_and_the_fidelity(tmp_path):
    out = run("demo", "--steps", "3", "--size", "128", cwd=tmp_path)
    torch_s = float(re.search(r"torch\s+s/step\s+([\d.]+)", out).group(1))
    ov_s = float(re.search(r"OpenVINO\s+s/step\s+([\d.]+)", out).group(1))
    assert torch_s > 0 and ov_s > 0
    assert float(re.search(r"UNet output rel L2\s+([\d.e+-]+)", out).group(1)) < 1e-4
    assert float(re.search(r"preview image PSNR\s+([\d.]+|inf)", out).group(1)) >= 40
    # the picture is the chart of what was measured: a bar of each colour per step
    import numpy as np
    from PIL import Image

    from sd_ov.tools.demo_chart import OPENVINO_COLOUR, TORCH_COLOUR

    chart = np.asarray(Image.open(tmp_path / "sd_ov_demo.png").convert("RGB"))
    for colour in (OPENVINO_COLOUR, TORCH_COLOUR):
        columns = np.flatnonzero((chart == colour).all(axis=-1).any(axis=0))
        assert len(np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1)) >= 3 + 1  # 3 steps + legend
    again = run("demo", "--steps", "2", "--size", "128", cwd=tmp_path)
    assert "from cache" in again


def test_export_a_checkpoint_file(micro_unet, tmp_path):
    ckpt = tmp_path / "mini.safetensors"
    tensors = {f"model.diffusion_model.{k}": v.contiguous() for k, v in micro_unet.state_dict().items()}
    tensors["first_stage_model.decoder.conv_in.weight"] = torch.zeros(4, 4)  # a VAE key, to be ignored
    save_file(tensors, str(ckpt))
    config = tmp_path / "micro.json"
    config.write_text(json.dumps(MICRO))
    args = [
        "export",
        "--checkpoint",
        str(ckpt),
        "--config",
        str(config),
        "--size",
        "128x128",
        "--verify",
        "--cache",
        str(tmp_path / "cache"),
    ]
    first = json.loads(run(*args, cwd=tmp_path))
    assert first["exported"] and first["verify_rel_l2"] < 1e-4
    second = json.loads(run(*args, cwd=tmp_path))
    assert not second["exported"] and second["entry"] == first["entry"]
    listing = run("cache", "--cache", str(tmp_path / "cache"), cwd=tmp_path)
    assert "mini" in listing and "fp32" in listing


def test_export_refuses_a_file_without_a_unet(tmp_path):
    bad = tmp_path / "vae.safetensors"
    save_file({"decoder.conv_in.weight": torch.zeros(2, 2)}, str(bad))
    done = subprocess.run(
        [sys.executable, "-m", "sd_ov", "export", "--checkpoint", str(bad)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2 and "holds no 'model.diffusion_model.*' weights" in done.stderr


def test_optimize_command_prints_the_report_and_the_cache_lists_it(tmp_path):
    config = tmp_path / "micro.json"
    config.write_text(json.dumps(MICRO))
    cache = str(tmp_path / "cache")
    common = [
        "--config",
        str(config),
        "--size",
        "64x64",
        "--calib-size",
        "64x64",
        "--calls",
        "1",
        "--cache",
        cache,
    ]
    out = run(
        "optimize",
        *common,
        "--int8",
        "hybrid",
        "--tome",
        "0.5",
        "--samples",
        "4",
        "--calib-prompts",
        "1",
        "--calib-steps",
        "4",
        "--deepcache-branch",
        "off",  # the default pair is made in webui/test_tab_api.py::test_api_optimizes_and_lists
        cwd=tmp_path,
    )
    report = json.loads(out[out.index("{") :])
    assert report["label"] == "INT8 ToMe0.5" and report["speedup"] > 0 and report["rel_l2"] < 0.5
    listing = run("cache", "--cache", cache, cwd=tmp_path)
    assert "int8-tome0.5" in listing and "x torch, rel L2" in listing
    assert "deepcache" not in listing  # "off": no pair
    done = subprocess.run(
        [sys.executable, "-m", "sd_ov", "optimize", *common, "--tome", "0.9"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2 and "between 0 and 0.75" in done.stderr
