"""Issue #10 in the webui stand-in: the Lora extension's loaded networks (stand-ins of its own
classes and math, tests/webui/stub/extensions-builtin/Lora) served by the OpenVINO UNet's LoRA
branch, against torch with the same networks merged into its weights the way the extension does
(`calc_updown` added to each layer's weight)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sd_ov.optimize import metrics
from sd_ov.runtime.torch_weights import is_released

from .harness import infotext_params, txt2img

LORA_EXTENSION = Path(__file__).parent / "stub" / "extensions-builtin" / "Lora"
EXTENSION_MODULES = ("network", "network_lora", "network_hada", "networks")
# Attention and feed-forward Linears and a 1x1 conv (an SD1 transformer's proj_in): what a
# kohya-style LoRA for SD1.5 trains; and 3x3 convs (a ResBlock's, the upsample's) as LoCon and
# LCM-LoRA train them.
LAYERS = (
    "input_blocks.1.1.transformer_blocks.0.attn1.to_q",
    "input_blocks.1.1.transformer_blocks.0.attn2.to_k",
    "middle_block.1.transformer_blocks.0.ff.net.2",
    "output_blocks.3.1.transformer_blocks.0.attn1.to_out.0",
    "input_blocks.1.1.proj_in",
    "input_blocks.1.0.in_layers.2",
    "output_blocks.1.2.conv",
)
MATCH = 1e-3  # rel L2 of the final latent, OpenVINO with the branch against torch merged


@pytest.fixture
def lora_ext(monkeypatch):
    """The stand-in extension on sys.path, as the webui puts extensions-builtin/Lora there."""
    monkeypatch.syspath_prepend(str(LORA_EXTENSION))
    for name in EXTENSION_MODULES:
        sys.modules.pop(name, None)
    import network
    import network_hada
    import network_lora
    import networks

    yield SimpleNamespace(
        network=network, network_lora=network_lora, network_hada=network_hada, networks=networks
    )
    networks.loaded_networks.clear()
    for name in EXTENSION_MODULES:
        sys.modules.pop(name, None)


def _weights(ext, path: str, module, w: dict):
    key = path.replace(".", "_")
    return ext.network.NetworkWeights(
        network_key=f"lora_unet_{key}", sd_key=f"diffusion_model_{key}", w=w, sd_module=module
    )


def lora_network(ext, webui, tiny_unet, name, layers=LAYERS, rank=4, multiplier=1.0, seed=0, cp=False):
    """A LoRA network as the extension loads it from a file: up/down per layer (down with the
    conv's kernel), alpha = rank / 2. cp: a 3x3 conv's layer as LoCon's CP decomposition (1x1
    down, 3x3 mid, 1x1 up)."""
    net = ext.network.Network(name)
    net.unet_multiplier = multiplier
    served = dict(webui.shared.sd_model.model.diffusion_model.named_modules())
    original = dict(tiny_unet.named_modules())  # the same weights, never released: for magnitudes
    gen = torch.Generator().manual_seed(seed)
    for path in layers:
        weight = original[path].weight.detach()
        out_f, in_f = weight.shape[0], weight[0].numel()
        down = torch.randn(rank, in_f, generator=gen) / in_f**0.5
        up = torch.randn(out_f, rank, generator=gen) * weight.abs().mean() * 8
        w = {"alpha": torch.tensor(rank / 2)}
        if weight.dim() == 4:
            down, up = down.reshape(rank, *weight.shape[1:]), up.reshape(out_f, rank, 1, 1)
            if cp and weight.shape[2:] != (1, 1):
                channels = weight.shape[1]
                down = torch.randn(rank, channels, 1, 1, generator=gen) / channels**0.5
                w["lora_mid.weight"] = torch.randn(rank, rank, *weight.shape[2:], generator=gen) / 3
        w.update({"lora_up.weight": up, "lora_down.weight": down})
        weights = _weights(ext, path, served[path], w)
        net.modules[weights.network_key] = ext.network_lora.NetworkModuleLora(net, weights)
    return net


@contextlib.contextmanager
def merged_into_torch(nets):
    """What the extension does in torch's forward: each layer's weight plus its `calc_updown`."""
    saved = {}
    with torch.no_grad():
        for net in nets:
            for module in net.modules.values():
                layer = module.sd_module
                saved.setdefault(id(layer), (layer, layer.weight.detach().clone()))
                updown, _ = module.calc_updown(layer.weight)
                layer.weight += updown
    try:
        yield
    finally:
        with torch.no_grad():
            for layer, weight in saved.values():
                layer.weight.copy_(weight)


def torch_job(webui, nets=()):
    webui.shared.opts.sd_unet = "None"
    with merged_into_torch(nets):
        return txt2img(webui)


def openvino_job(webui, ext, nets=(), override=None):
    webui.shared.opts.sd_unet = "Automatic"
    ext.networks.loaded_networks[:] = list(nets)
    return txt2img(webui, override=override)


def test_loras_run_on_openvino_and_switch_without_a_recompile(webui, lora_ext, tiny_unet):
    style = lora_network(lora_ext, webui, tiny_unet, "style", multiplier=0.8, seed=1)
    ink = lora_network(lora_ext, webui, tiny_unet, "ink", LAYERS[1:], rank=8, seed=2, cp=True)
    base = torch_job(webui)
    expected = {
        "style:0.8": torch_job(webui, [style]),
        "style:0.4": None,
        "style:0.8, ink:1": torch_job(webui, [style, ink]),
    }
    style.unet_multiplier = 0.4
    expected["style:0.4"] = torch_job(webui, [style])
    style.unet_multiplier = 0.8
    assert metrics.rel_l2(expected["style:0.8"].latent, base.latent) > 0.05, "the LoRA must matter"

    unet = webui.shared.sd_model.model.diffusion_model
    openvino_job(webui, lora_ext, [])
    assert not webui.sd_unet.current_unet.served.plain.lora_slots, "no LoRA yet: no branch, no cost"
    job = openvino_job(webui, lora_ext, [style])  # the first LoRA: the graph gets its branch
    assert webui.sd_unet.current_unet.served.plain.lora_slots
    params = infotext_params(job.infotexts[0])
    assert params["OpenVINO"] == "fp32, CPU, f32, dynamic" and params["OpenVINO LoRA"] == "style:0.8"
    assert metrics.rel_l2(job.latent, expected["style:0.8"].latent) <= MATCH
    assert is_released(unet), "the torch UNet's weights stay freed: OpenVINO applies the LoRA"

    served = webui.sd_unet.current_unet.served
    compiles = dict(served.plain.stats.compiles)
    style.unet_multiplier = 0.4  # <lora:style:0.4>
    job = openvino_job(webui, lora_ext, [style])
    assert infotext_params(job.infotexts[0])["OpenVINO LoRA"] == "style:0.4"
    assert metrics.rel_l2(job.latent, expected["style:0.4"].latent) <= MATCH
    style.unet_multiplier = 0.8
    job = openvino_job(webui, lora_ext, [style, ink])  # two at once, another rank
    assert infotext_params(job.infotexts[0])["OpenVINO LoRA"] == "style:0.8, ink:1"
    assert metrics.rel_l2(job.latent, expected["style:0.8, ink:1"].latent) <= MATCH
    job = openvino_job(webui, lora_ext, [])  # and none again
    assert "OpenVINO LoRA" not in infotext_params(job.infotexts[0])
    assert metrics.rel_l2(job.latent, base.latent) <= MATCH
    assert webui.sd_unet.current_unet.served is served and served.plain.stats.compiles == compiles


def test_a_network_the_branch_cannot_take_runs_on_torch_with_the_reason(webui, lora_ext, tiny_unet):
    """LoHa is not a low-rank update: the job is torch's (its weights read back for it, freed again
    when it ends), never a picture without the LoRA; the next job without it is OpenVINO's again."""
    unet = webui.shared.sd_model.model.diffusion_model
    base = torch_job(webui)  # the stand-in's torch applies no network: torch's picture is this one
    openvino_job(webui, lora_ext)
    assert is_released(unet)
    path = LAYERS[0]
    layer = dict(unet.named_modules())[path]
    rank, (out_f, in_f) = 2, tuple(dict(tiny_unet.named_modules())[path].weight.shape)
    w = {
        "hada_w1_a": torch.randn(out_f, rank),
        "hada_w1_b": torch.randn(rank, in_f),
        "hada_w2_a": torch.randn(out_f, rank),
        "hada_w2_b": torch.randn(rank, in_f),
    }
    loha = lora_ext.network.Network("weave")
    weights = _weights(lora_ext, path, layer, w)
    loha.modules[weights.network_key] = lora_ext.network_hada.NetworkModuleHada(loha, weights)
    job = openvino_job(webui, lora_ext, [loha])
    said = infotext_params(job.infotexts[0])["OpenVINO"]
    assert said.startswith("off (LoRA weave:1: LoHa layers are not served on OpenVINO yet"), said
    assert torch.equal(job.latent, base.latent), "torch made it, with the checkpoint's weights"
    assert is_released(unet), "freed again once the job ended"
    again = openvino_job(webui, lora_ext, [])
    assert infotext_params(again.infotexts[0])["OpenVINO"] == "fp32, CPU, f32, dynamic" and is_released(unet)


def test_with_lora_support_off_a_lora_job_is_torchs(webui, lora_ext, tiny_unet):
    """Settings → OpenVINO → LoRA off: no branch in the graph, and a LoRA job runs on torch (the
    stand-in's torch forward applies no network, so its picture is torch's base picture)."""
    base = torch_job(webui)
    style = lora_network(lora_ext, webui, tiny_unet, "style")
    job = openvino_job(webui, lora_ext, [style], override={"sd_ov_lora": False})
    said = infotext_params(job.infotexts[0])["OpenVINO"]
    assert said == "off (LoRA style:1: LoRA support is off in Settings → OpenVINO)", said
    assert not webui.sd_unet.current_unet.served.plain.lora_slots  # no branch in the graph
    assert torch.equal(job.latent, base.latent)


def test_a_lora_in_the_first_job_is_not_baked_into_the_export(webui, lora_ext, tiny_unet, tmp_path):
    """The export traces torch's forward, which the real Lora extension patches to merge the loaded
    networks: while it traces, no network is loaded (the cached IR is the checkpoint's own)."""
    unet = webui.shared.sd_model.model.diffusion_model
    seen = []

    def record(*_):
        if torch.jit.is_tracing():  # the export's calls, not the job's
            seen.append(len(lora_ext.networks.loaded_networks))

    hook = unet.register_forward_pre_hook(record)
    style = lora_network(lora_ext, webui, tiny_unet, "style")
    try:
        job = openvino_job(webui, lora_ext, [style], override={"sd_ov_cache_dir": str(tmp_path / "fresh")})
    finally:
        hook.remove()
    assert any(tmp_path.joinpath("fresh").rglob("unet.xml")), "this job exported"
    assert seen and set(seen) == {0}, seen
    assert lora_ext.networks.loaded_networks == [style]
    assert infotext_params(job.infotexts[0])["OpenVINO LoRA"] == "style:1"


def test_a_lora_with_deepcache_runs_on_both_models(webui, lora_ext, tiny_unet):
    """The first LoRA reopens the models with the branch before DeepCache's open for the job."""
    outer = "output_blocks.5.1.transformer_blocks.0.attn1.to_v"  # in the shallow model too
    style = lora_network(lora_ext, webui, tiny_unet, "style", (*LAYERS, outer), seed=3)
    webui.shared.opts.sd_unet = "Automatic"
    lora_ext.networks.loaded_networks[:] = [style]
    job = txt2img(webui, deepcache=(2, 0, "uniform"))
    params = infotext_params(job.infotexts[0])
    assert params["OpenVINO"].startswith("fp32+DeepCache") and params["OpenVINO LoRA"] == "style:1", params
    served = webui.sd_unet.current_unet.served
    assert served.deepcache.full.lora_layers == len(LAYERS) + 1 and served.deepcache.shallow.lora_layers == 1
    lora_ext.networks.loaded_networks[:] = []
    plain_dc = txt2img(webui, deepcache=(2, 0, "uniform"))
    assert metrics.rel_l2(job.latent, plain_dc.latent) > 0.05  # the LoRA reached the picture


def test_an_interrupt_while_the_first_lora_adds_the_branch_leaves_the_job_to_torch(
    webui, lora_ext, tiny_unet
):
    """The branch's compile at a job's start is long work the Interrupt may stop: that job is
    torch's, with the reason, never a failed job; the next one serves the LoRA."""
    style = lora_network(lora_ext, webui, tiny_unet, "style", multiplier=0.8, seed=1)
    openvino_job(webui, lora_ext, [])
    webui.shared.state.interrupt()  # pressed as the job starts
    job = openvino_job(webui, lora_ext, [style])
    assert infotext_params(job.infotexts[0])["OpenVINO"] == "off (interrupted by the user)"
    assert job.latent.isfinite().all()  # made by torch (the stand-in's torch does not apply LoRAs)
    webui.shared.state.begin()
    params = infotext_params(openvino_job(webui, lora_ext, [style]).infotexts[0])
    assert params["OpenVINO"] == "fp32, CPU, f32, dynamic" and params["OpenVINO LoRA"] == "style:0.8"
