"""Faults in the webui flow (docs/faults.md): each ends with a message, torch serves the job, and
the cache holds nothing half-written; the next job works."""

from __future__ import annotations

import openvino as ov
import torch

from sd_ov.graphs import export
from sd_ov.serve import engine

from .harness import (
    OPENVINO_SAYS,
    faulty_runtime_job,
    openvino_infotext,
    openvino_runtime_error,
    txt2img,
)


def leftovers(root):
    return [p for p in root.glob("*/*") if ".tmp-" in p.name or ".trash-" in p.name]


def test_an_unwritable_cache_folder_serves_torch_with_a_message(webui, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    webui.shared.opts.sd_ov_cache_dir = str(blocker / "cache")
    webui.shared.opts.sd_unet = "None"
    torch_job = txt2img(webui)
    webui.shared.opts.sd_unet = "Automatic"
    job = txt2img(webui)
    assert openvino_infotext(job).startswith("off (") and "Not a directory" in openvino_infotext(job)
    assert torch.equal(job.latent, torch_job.latent)


def test_a_compile_failure_serves_torch_and_the_next_job_tries_again(webui, monkeypatch):
    """OpenVINO refuses the compile (its own error, its own words in the infotext): torch makes
    the job; the next job opens again, whatever the settings."""
    real = ov.Core.compile_model
    error = openvino_runtime_error()

    def failing(self, model, device=None, config=None):
        raise error

    monkeypatch.setattr(ov.Core, "compile_model", failing)
    job = txt2img(webui)
    assert openvino_infotext(job) == f"off ({OPENVINO_SAYS})"
    monkeypatch.setattr(ov.Core, "compile_model", real)
    assert openvino_infotext(txt2img(webui)) == "fp32, CPU, f32, dynamic"


def test_a_device_lost_mid_job_finishes_on_torch(webui, monkeypatch):
    def lost_after_one(n, call):
        if n > 1:
            raise openvino_runtime_error()  # as a device lost (driver reset) would come
        return call()

    torch_job, job, _ = faulty_runtime_job(webui, monkeypatch, lost_after_one)
    text = openvino_infotext(job)
    assert text.startswith(f"partly (1/4 calls; 3 on torch: {OPENVINO_SAYS}"), text
    assert webui.sd_unet.current_unet.served is None  # its memory was given back
    assert (job.latent - torch_job.latent).abs().max() < 1e-3


def test_out_of_memory_while_exporting_serves_torch(webui, tmp_path, monkeypatch):
    webui.shared.opts.sd_ov_cache_dir = str(tmp_path / "cache")

    def out_of_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(export, "convert_unet", out_of_memory)
    job = txt2img(webui)
    assert openvino_infotext(job) == (
        "off (out of memory while preparing the OpenVINO UNet (nothing was written to the cache))"
    )
    assert leftovers(tmp_path / "cache") == [] and not list((tmp_path / "cache").glob("*/*/manifest.json"))


def test_interrupt_during_the_first_export_leaves_no_entry_and_the_next_job_works(
    webui, tmp_path, monkeypatch
):
    webui.shared.opts.sd_ov_cache_dir = str(tmp_path / "cache")
    real = engine.export_unet

    def interrupted(unet, spec, folder, progress):
        webui.shared.state.interrupt()  # the user presses Interrupt while the UNet is traced
        return real(unet, spec, folder, progress)

    monkeypatch.setattr(engine, "export_unet", interrupted)
    job = txt2img(webui)
    assert openvino_infotext(job) == "off (interrupted by the user)"
    assert leftovers(tmp_path / "cache") == [] and not list((tmp_path / "cache").glob("*/*/manifest.json"))
    monkeypatch.setattr(engine, "export_unet", real)
    webui.shared.state.begin()  # the next job tries again
    assert openvino_infotext(txt2img(webui)) == "fp32, CPU, f32, dynamic"
