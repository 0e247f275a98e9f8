"""A session of mixed jobs in one webui stand-in: OpenVINO and torch jobs interleaved, with and
without LoRAs, the Lora extension applying networks on torch the way it does (its patched
`Linear`/`Conv2d` forwards merge into the weights in place and keep backups; the stand-in's
`process_images_inner` runs the scripts' `process` hook outside `no_grad`, as the webui does).

A fallback costs its own job only: every OpenVINO job after a torch job is served again and
matches torch; a forced failure leaves the next job served; tiling and hypernetworks go to torch
with their reason."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sd_ov.optimize import metrics
from sd_ov.runtime.torch_weights import is_released

from .harness import add_vae_and_text_encoder, openvino_infotext, txt2img
from .test_lora import MATCH, lora_ext, lora_network  # noqa: F401 - the fixture

SERVED = "fp32, CPU, f32, dynamic"


@pytest.fixture
def torch_lora(lora_ext, monkeypatch, webui):  # noqa: F811 - the imported fixture
    """The Lora extension's torch path installed as its `lora_script` installs it."""
    networks = lora_ext.networks
    monkeypatch.setattr(torch.nn.Linear, "forward", networks.network_Linear_forward)
    monkeypatch.setattr(torch.nn.Conv2d, "forward", networks.network_Conv2d_forward)
    networks.assign_network_names_to_compvis_modules(webui.shared.sd_model)
    return lora_ext


def keyed_as_the_extension(net):
    """A network's modules under the layer names the extension gives the UNet's modules."""
    net.modules = {module.sd_key: module for module in net.modules.values()}
    return net


def job(webui, ext, unet_setting: str, nets=(), **kwargs):
    """A job with SD Unet `unet_setting` set per request (the API's override_settings) and the
    prompt's LoRAs loaded, as the webui loads them before sampling."""
    ext.networks.loaded_networks[:] = list(nets)
    return txt2img(webui, override={"sd_unet": unet_setting}, **kwargs)


def test_openvino_jobs_after_a_torch_job_with_a_lora_are_served(webui, torch_lora, tiny_unet, caplog):
    """OpenVINO + LoRA, torch + LoRA, OpenVINO plain, OpenVINO + LoRA, torch plain: each
    OpenVINO job served and matching torch's (with the same LoRA), and the torch job after them
    makes the checkpoint's own picture (the LoRA's merge undone, the freed weights read back)."""
    style = keyed_as_the_extension(
        lora_network(torch_lora, webui, tiny_unet, "style", multiplier=0.8, seed=1)
    )
    unet = webui.shared.sd_model.model.diffusion_model
    base = job(webui, torch_lora, "None")
    ov_lora = job(webui, torch_lora, "Automatic", [style])
    torch_with_lora = job(webui, torch_lora, "None", [style])
    assert any(getattr(m, "network_weights_backup", None) is not None for m in unet.modules()), (
        "the extension merged the LoRA into torch's weights, keeping its backups"
    )
    ov_plain = job(webui, torch_lora, "Automatic")
    assert is_released(unet), "served again: the torch weights are freed again"
    ov_lora_again = job(webui, torch_lora, "Automatic", [style])
    torch_plain = job(webui, torch_lora, "None")

    for ov in (ov_lora, ov_plain, ov_lora_again):
        assert openvino_infotext(ov) == SERVED, ov.infotexts[0]
    assert metrics.rel_l2(torch_with_lora.latent, base.latent) > 0.05, "the LoRA must matter"
    assert metrics.rel_l2(ov_lora.latent, torch_with_lora.latent) <= MATCH
    assert metrics.rel_l2(ov_lora_again.latent, torch_with_lora.latent) <= MATCH
    assert metrics.rel_l2(ov_plain.latent, base.latent) <= MATCH
    assert torch.equal(torch_plain.latent, base.latent), "torch's own weights, bit for bit"
    # the LoRA's merge is undone at the job's start, outside the webui's no_grad, without an error
    assert "weights stay in memory" not in caplog.text, caplog.text


@pytest.mark.parametrize("where", ["open", "start_job"])
def test_a_failure_in_one_job_leaves_the_next_job_served(webui, monkeypatch, where):
    """An unexpected error while opening, or at a job's start, makes that job torch's with a reason
    in the user's words (the Python error only in the console); the next job opens again."""
    from sd_ov import ServedUNet

    base = txt2img(webui, override={"sd_unet": "None"})
    if where == "start_job":
        txt2img(webui)  # served: the failure comes to an open UNet
    real = getattr(ServedUNet, where)
    failures = SimpleNamespace(left=1)

    def fails_once(self, *args, **kwargs):
        if failures.left:
            failures.left -= 1
            raise RuntimeError("a leaf Variable that requires grad is being used in an in-place operation.")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ServedUNet, where, fails_once)
    failed = txt2img(webui)
    said = openvino_infotext(failed)
    assert said.startswith("off (an unexpected error in sd-ov (RuntimeError, details in the console)"), said
    assert "leaf Variable" not in said
    assert torch.equal(failed.latent, base.latent), "torch made the failed job"
    assert webui.sd_unet.current_unet.served is None, "what OpenVINO held is given back"
    again = txt2img(webui)
    assert openvino_infotext(again) == SERVED
    assert metrics.rel_l2(again.latent, base.latent) <= MATCH


def test_the_same_cause_is_said_in_the_console_twice_then_not_again(webui, monkeypatch, capsys):
    webui.shared.opts.sd_ov_device = "NPU"  # absent here: every job fails to open, for the same cause
    for _ in range(4):
        assert openvino_infotext(txt2img(webui)).startswith("off (OpenVINO device NPU is not available")
    out = capsys.readouterr().out
    assert out.count("[sd-ov] OpenVINO UNet unavailable, using torch") == 1
    assert out.count("OpenVINO unavailable again, for the same cause") == 1
    webui.shared.opts.sd_ov_device = "CPU"
    assert openvino_infotext(txt2img(webui)) == SERVED


def test_tiling_goes_to_torch_with_its_reason_and_the_next_job_is_served(webui):
    """The webui's Tiling pads every convolution circularly: the UNet's calls and the VAE's decode
    are torch's (the seamless picture, not a picture without wrap-around), said in the infotext;
    the next job without tiling is OpenVINO's again."""
    add_vae_and_text_encoder(webui)
    webui.shared.opts.sd_ov_vae = True
    webui.shared.opts.sd_ov_text_encoder = False  # the prompts on torch in both: the rest compares exactly
    # a fresh cache: the tiled job exports, and what it caches must be the checkpoint's own graph
    webui.shared.opts.sd_ov_cache_dir = str(webui.tmp_path / "fresh")
    torch_tiled = txt2img(webui, tiling=True, override={"sd_unet": "None"})
    ov_tiled = txt2img(webui, tiling=True)
    params_said = ov_tiled.infotexts[0]
    assert openvino_infotext(ov_tiled).startswith("off (Tiling is on"), params_said
    assert "VAE on torch: Tiling is on" in params_said
    assert "OpenVINO VAE" not in params_said
    assert torch.equal(ov_tiled.latent, torch_tiled.latent)
    assert torch.allclose(ov_tiled.decoded, torch_tiled.decoded)
    plain_torch = txt2img(webui, override={"sd_unet": "None"})
    assert metrics.rel_l2(plain_torch.latent, torch_tiled.latent) > 1e-3, "tiling changes the picture"
    assert any((webui.tmp_path / "fresh").rglob("unet.xml")), "the tiled job exported the UNet"
    plain = txt2img(webui)
    assert openvino_infotext(plain) == SERVED
    assert metrics.rel_l2(plain.latent, plain_torch.latent) <= MATCH, "the cached graph pads with zeros"
    assert is_released(webui.shared.sd_model.model.diffusion_model), "after the torch job: freed again"


def test_a_hypernetwork_goes_to_torch_with_its_reason(webui):
    webui.shared.loaded_hypernetworks.append(SimpleNamespace(name="anime"))
    try:
        said = openvino_infotext(txt2img(webui))
    finally:
        webui.shared.loaded_hypernetworks.clear()
    assert said == "off (hypernetwork anime: the OpenVINO UNet does not apply hypernetworks)", said
    assert openvino_infotext(txt2img(webui)) == SERVED


def test_hypertile_is_served_with_a_note(webui):
    webui.shared.opts.hypertile_enable_unet = True
    done = txt2img(webui)
    assert openvino_infotext(done) == SERVED
    assert "Hypertile not applied" in done.infotexts[0]
