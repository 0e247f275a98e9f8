"""Opt-in: sd-ov inside a real AUTOMATIC1111 webui (v1.10.x) checkout, driven through its API.

Set SD_OV_WEBUI_DIR to a webui checkout whose venv is set up and that has a SD1.x checkpoint in
models/Stable-diffusion (optionally SD_OV_WEBUI_PYTHON for its interpreter, default
<dir>/venv/bin/python). The test links this repository into extensions/, starts the webui
API-only on CPU (install.py runs as at any start), makes the same txt2img (Euler, 256², fixed
seed) with the torch UNet and with the OpenVINO UNet, compares the pictures, restarts, and checks
that the second start reuses the cache. Skipped when SD_OV_WEBUI_DIR is unset.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from sd_ov.metrics import psnr

WEBUI = os.environ.get("SD_OV_WEBUI_DIR")
pytestmark = [
    pytest.mark.webui,
    pytest.mark.skipif(not WEBUI, reason="SD_OV_WEBUI_DIR is not set (opt-in test against a real webui)"),
]
ROOT = Path(__file__).resolve().parents[1]
PORT = int(os.environ.get("SD_OV_WEBUI_PORT", "7899"))
JOB = {
    "prompt": "a lighthouse on a cliff at dusk, oil painting",
    "negative_prompt": "blurry",
    "steps": 8,
    "width": 256,
    "height": 256,
    "sampler_name": "Euler",
    "seed": 1234,
    "cfg_scale": 7,
    "override_settings_restore_afterwards": True,
}


def api(path: str, payload: dict | None = None, timeout: float = 1800) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{PORT}{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


class Webui:
    def __init__(self, folder: Path, log: Path) -> None:
        python = os.environ.get("SD_OV_WEBUI_PYTHON", str(folder / "venv" / "bin" / "python"))
        args = [
            python,
            "launch.py",
            "--api",
            "--nowebui",
            "--port",
            str(PORT),
            "--use-cpu",
            "all",
            "--no-half",
            "--skip-torch-cuda-test",
            "--skip-version-check",
        ]
        self.log = log
        self.started = time.perf_counter()
        self.log_file = open(log, "w")  # noqa: SIM115 - stays open while the server runs
        self.process = subprocess.Popen(args, cwd=folder, stdout=self.log_file, stderr=subprocess.STDOUT)
        deadline = time.time() + 1800
        while time.time() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the webui exited: {log.read_text()[-3000:]}")
            try:
                api("/sdapi/v1/sd-models", timeout=10)
                return
            except OSError:
                time.sleep(5)
        pytest.fail("the webui did not start within 30 minutes")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log_file.close()


def txt2img(
    unet: str, openvino: bool = True, deepcache: tuple = (0, 0, "uniform")
) -> tuple[np.ndarray, str, float]:
    from PIL import Image

    started = time.perf_counter()
    result = api(
        "/sdapi/v1/txt2img",
        {
            **JOB,
            "override_settings": {"sd_unet": unet},
            "alwayson_scripts": {"OpenVINO": {"args": [openvino, *deepcache]}},
        },
    )
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(result["images"][0]))).convert("RGB"))
    return image, json.loads(result["info"])["infotexts"][0], time.perf_counter() - started


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    link = Path(WEBUI) / "extensions" / "sd-ov-under-test"
    if link.exists() or link.is_symlink():
        link.unlink() if link.is_symlink() else shutil.rmtree(link)
    link.symlink_to(ROOT, target_is_directory=True)
    yield tmp_path_factory.mktemp("webui-logs")
    link.unlink()


def test_txt2img_through_openvino_matches_torch_and_restart_reuses_the_cache(installed):
    first = Webui(Path(WEBUI), installed / "first.log")
    try:
        torch_image, torch_info, _ = txt2img("None")
        ov_image, ov_info, first_s = txt2img("Automatic")
        cached_image, cached_info, _ = txt2img("Automatic", deepcache=(3, 0, "uniform"))
        after_image, after_info, _ = txt2img("Automatic")
    finally:
        first.stop()
    assert "OpenVINO:" not in torch_info
    assert "OpenVINO: fp32" in ov_info, ov_info
    assert psnr(ov_image, torch_image) >= 40
    assert "OpenVINO DeepCache: interval 3, branch 0, uniform" in cached_info, cached_info
    assert cached_image.shape == ov_image.shape
    assert "DeepCache" not in after_info and psnr(after_image, ov_image) >= 40  # the next job is unaffected
    first_log = (installed / "first.log").read_text()
    assert "[sd-ov] tracing the torch UNet" in first_log

    second = Webui(Path(WEBUI), installed / "second.log")
    try:
        again, again_info, second_s = txt2img("Automatic")
    finally:
        second.stop()
    second_log = (installed / "second.log").read_text()
    assert "[sd-ov] using cached OpenVINO UNet" in second_log
    assert "[sd-ov] tracing the torch UNet" not in second_log
    assert second_s < first_s
    assert psnr(again, ov_image) >= 40 and "OpenVINO: fp32" in again_info


def test_optimize_through_the_api_adds_an_option_that_txt2img_uses(installed):
    """Issue #3's webui check: Optimize on the loaded checkpoint completes (progress in the log),
    its option serves a txt2img, and the report is listed."""
    webui = Webui(Path(WEBUI), installed / "optimize.log")
    try:
        torch_image, _, _ = txt2img("None")
        result = api(
            "/sd-ov/v1/optimize",
            {
                "int8": "hybrid",
                "tome": 0.5,
                "prompts_text": f"{JOB['prompt']}\na red vintage car in the rain, photograph",
                "calib_size": "256x256",
                "calib_steps": 4,
                "samples": 8,
                "sizes_text": "256x256",
                "measure_size": "256x256",
            },
            timeout=3600,
        )
        assert "error" not in result, result
        image, info, _ = txt2img(result["label"])
        listed = api("/sd-ov/v1/recipes")["recipes"]
    finally:
        webui.stop()
    assert "OpenVINO: int8-tome0.5" in info, info
    assert psnr(image, torch_image) >= 20  # INT8 + ToMe on real weights: close to torch, not identical
    assert result["report"]["speedup"] > 0 and "psnr_db" in result["report"]
    assert any(r["label"] == "INT8 ToMe0.5" for r in listed)
    assert "[sd-ov] calibration picture 1/2" in (installed / "optimize.log").read_text()
