"""Issue #9 in the adapter: the text encoder and VAE through OpenVINO (equal to torch, their torch
weights freed while OpenVINO serves and back when torch needs them), and `lowvram`, where each
OpenVINO model is compiled only for its part of the job and the picture is the same."""

from __future__ import annotations

import re
import sys
from types import SimpleNamespace

import pytest
import torch

from sd_ov.optimize import metrics
from sd_ov.runtime import ov_core
from sd_ov.runtime.torch_weights import is_released
from sd_ov.store import cache

from .harness import add_vae_and_text_encoder, infotext_params, txt2img

ON = {"sd_ov_vae": True, "sd_ov_text_encoder": True}
OFF = {"sd_ov_vae": False, "sd_ov_text_encoder": False}


def test_text_encoder_through_openvino_matches_torch_with_embeddings_and_clip_skip(webui):
    model = add_vae_and_text_encoder(webui)
    encoder = model.cond_stage_model.wrapped.transformer.text_model.encoder
    for prompt, skip in (("a red fox <ti> in snow", 1), ("a red fox <ti> in snow", 2)):
        torch_job = txt2img(webui, prompt=prompt, override={**OFF, "CLIP_stop_at_last_layers": skip})
        assert not is_released(encoder)
        job = txt2img(webui, prompt=prompt, override={**ON, "CLIP_stop_at_last_layers": skip})
        params = infotext_params(job.infotexts[0])
        assert params["OpenVINO text encoder"] == f"clip skip {skip}", params
        assert is_released(encoder)  # served by OpenVINO: torch's copy is gone
        # stated tolerance: the text encoder's f32 difference (~2e-6) carried through 4 UNet steps
        assert metrics.rel_l2(job.latent, torch_job.latent) < 1e-5
    # the textual-inversion vectors reached OpenVINO: without them the picture differs
    plain = txt2img(webui, prompt="a red fox in snow", override=ON)
    assert metrics.rel_l2(plain.latent, job.latent) > 1e-3


def test_a_text_encoder_lora_makes_torch_encode_the_prompt(webui, monkeypatch):
    """The Lora extension applies a text-encoder LoRA inside torch's forward: OpenVINO must not
    encode that prompt, and torch needs its weights back."""
    model = add_vae_and_text_encoder(webui)
    transformer = model.cond_stage_model.wrapped.transformer
    txt2img(webui, override=ON)
    assert is_released(transformer.text_model.encoder)
    layer = transformer.text_model.encoder.layers[0].mlp.fc1
    lora = SimpleNamespace(
        name="inkstyle", te_multiplier=1.0, modules={"te_fc1": SimpleNamespace(sd_module=layer)}
    )
    monkeypatch.setitem(sys.modules, "networks", SimpleNamespace(loaded_networks=[lora]))
    job = txt2img(webui, override=ON)
    said = infotext_params(job.infotexts[0])["OpenVINO text encoder"]
    assert said == "torch (LoRA inkstyle:1 changes the text encoder)"
    assert not is_released(transformer.text_model.encoder)
    torch_job = txt2img(webui, override=OFF)
    assert torch.equal(job.latent, torch_job.latent)  # both encoded by torch


def test_a_lora_loaded_when_the_text_encoder_is_first_exported_is_not_traced(webui, monkeypatch, tmp_path):
    """The export traces torch's text encoder, whose Linears the real Lora extension patches to
    merge the loaded networks: while it traces, none is loaded (a kohya SDXL LoRA left loaded by
    the job before made the trace fail its own check in the real webui, or would be baked into the
    cached IR), and the job's own LoRA is still there afterwards, so torch encodes that prompt."""
    model = add_vae_and_text_encoder(webui)
    transformer = model.cond_stage_model.wrapped.transformer
    layer = transformer.text_model.encoder.layers[0].mlp.fc1
    lora = SimpleNamespace(
        name="inkstyle", te_multiplier=1.0, modules={"te_fc1": SimpleNamespace(sd_module=layer)}
    )
    loaded = [lora]
    monkeypatch.setitem(sys.modules, "networks", SimpleNamespace(loaded_networks=loaded))
    seen = []

    def record(*_):
        if torch.jit.is_tracing():  # the export's calls, not the job's
            seen.append(len(loaded))

    hook = transformer.register_forward_pre_hook(record)
    try:
        job = txt2img(webui, override={**ON, "sd_ov_cache_dir": str(tmp_path / "fresh")})
    finally:
        hook.remove()
    assert any(tmp_path.joinpath("fresh").rglob("text_encoder*.xml")), "this job exported"
    assert seen and set(seen) == {0}, seen
    assert loaded == [lora]
    said = infotext_params(job.infotexts[0])["OpenVINO text encoder"]
    assert said == "torch (LoRA inkstyle:1 changes the text encoder)"


def test_the_torch_vae_is_freed_while_openvino_decodes_and_a_fallback_or_a_new_vae_brings_it_back(
    webui, monkeypatch
):
    model = add_vae_and_text_encoder(webui)
    vae = model.first_stage_model
    expected = {k: v.clone() for k, v in vae.state_dict().items()}
    job = txt2img(webui, override={"sd_ov_vae": True})
    assert infotext_params(job.infotexts[0])["OpenVINO VAE"] == "decode" and is_released(vae)

    def broken(self, z):
        raise RuntimeError("VAE device lost")

    monkeypatch.setattr(type(webui.sd_unet.current_unet.vae.ov), "decode", broken)
    failed = txt2img(webui, override={"sd_ov_vae": True})
    assert not is_released(vae)  # torch decoded with its own weights, read back bit-exactly
    assert all(torch.equal(v, expected[k]) for k, v in vae.state_dict().items())
    with torch.no_grad():
        assert torch.allclose(failed.decoded, vae.decode(failed.latent / 0.18215), atol=1e-6)
    monkeypatch.undo()

    txt2img(webui, override={"sd_ov_vae": True})
    assert is_released(vae)
    backup = vae.state_dict()  # what the webui's sd_vae.store_base_vae copies before a VAE switch
    assert all(torch.equal(v, expected[k]) for k, v in backup.items())
    txt2img(webui, override={"sd_ov_vae": False})
    assert not is_released(vae) and "decode" not in vars(vae)


def test_img2img_encodes_its_picture_on_openvino_from_the_first_job_and_on_torch_when_off(webui):
    """The webui encodes img2img's picture in `p.init`, before the batch hooks and before it
    applies the SD Unet: sd-ov readies its VAE at `process` (the SD Unet applied a step early), so
    the first OpenVINO img2img job encodes on OpenVINO and says so, and a job with OpenVINO off
    encodes on torch, not on the VAE the job before left attached."""
    model = add_vae_and_text_encoder(webui)
    vae = model.first_stage_model
    picture = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5)) * 2 - 1  # latent 32²
    vae_on = {"sd_ov_vae": True}
    torch_job = txt2img(webui, enabled=False, override=vae_on, init_image=picture)
    assert infotext_params(torch_job.infotexts[0])["OpenVINO"].startswith("off")
    ov_job = txt2img(webui, override=vae_on, init_image=picture)
    assert infotext_params(ov_job.infotexts[0])["OpenVINO VAE"] == "encode, decode"
    assert is_released(vae)  # encoded without the torch weights
    assert not torch.equal(ov_job.init_latent, torch_job.init_latent)  # OpenVINO's own f32 sums
    assert metrics.rel_l2(ov_job.init_latent, torch_job.init_latent) < 1e-4
    off_job = txt2img(webui, enabled=False, override=vae_on, init_image=picture)
    assert torch.equal(off_job.init_latent, torch_job.init_latent) and not is_released(vae)
    again = txt2img(webui, override=vae_on, init_image=picture)
    assert infotext_params(again.infotexts[0])["OpenVINO VAE"] == "encode, decode"
    assert torch.equal(again.init_latent, ov_job.init_latent)


def test_the_vae_precision_setting_compiles_the_vae_again_and_the_infotext_names_it(webui):
    """bf16 (where this CPU has it) is another compiled VAE, close to torch's picture; back to f32,
    the f32 decode again. A device without bf16 (GPU) would get f32 whatever the setting says."""
    if "BF16" not in ov_core.get_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no bf16")
    add_vae_and_text_encoder(webui)
    f32 = txt2img(webui, override={"sd_ov_vae": True, "sd_ov_vae_precision": "f32"})
    vae = webui.sd_unet.current_unet.vae
    assert infotext_params(f32.infotexts[0])["OpenVINO VAE"] == "decode" and vae.ov.precision == "f32"
    bf16 = txt2img(webui, override={"sd_ov_vae": True, "sd_ov_vae_precision": "bf16"})
    assert (
        infotext_params(bf16.infotexts[0])["OpenVINO VAE"] == "decode (bf16)" and vae.ov.precision == "bf16"
    )
    assert torch.equal(bf16.latent, f32.latent)  # only the decode changed
    assert not torch.equal(bf16.decoded, f32.decoded)  # it did run at bf16
    assert metrics.rel_l2(bf16.decoded, f32.decoded) < 2e-2
    again = txt2img(webui, override={"sd_ov_vae": True, "sd_ov_vae_precision": "f32"})
    assert (
        torch.equal(again.decoded, f32.decoded)
        and infotext_params(again.infotexts[0])["OpenVINO VAE"] == "decode"
    )


def test_each_offload_mode_gives_the_same_picture_and_keeps_what_it_says(webui):
    add_vae_and_text_encoder(webui)
    none = txt2img(webui, override={**ON, "sd_ov_offload": "none"})
    unet = webui.sd_unet.current_unet
    assert (
        unet.served.plain.compiled_shapes
        and unet.vae.ov.compiled_models()
        and unet.text_encoder.ov.compiled_models()
    )
    before = unet.served.plain.stats.calls
    low = txt2img(webui, override={**ON, "sd_ov_offload": "lowvram"})
    low_calls = unet.served.plain.stats.calls - before
    # lowvram runs cond and uncond as two calls (a lower peak): the same picture
    assert unet.served.plain.max_batch == 1
    assert torch.allclose(low.latent, none.latent, atol=1e-5)
    assert torch.allclose(low.decoded, none.decoded, atol=1e-5)
    # after the job nothing compiled is held: the next job compiles again, from the blob cache
    assert unet.served.plain.compiled_models() == [] and unet.vae.ov.compiled_models() == []
    assert unet.text_encoder.ov.compiled_models() == []
    params = infotext_params(low.infotexts[0])
    assert params["OpenVINO VAE"] == "decode" and params["OpenVINO text encoder"] == "clip skip 1"
    again = txt2img(webui, override={**ON, "sd_ov_offload": "lowvram"})
    assert torch.equal(again.latent, none.latent)
    # release: every model stays compiled between jobs (their buffers given back after their
    # phase), so a second identical job compiles nothing
    before = unet.served.plain.stats.calls
    release = txt2img(webui, override={**ON, "sd_ov_offload": "release"})
    assert torch.equal(release.decoded, none.decoded) and unet.served.plain.max_batch == 0
    assert low_calls == 2 * (unet.served.plain.stats.calls - before)  # one call per step in release
    assert (
        unet.served.plain.compiled_shapes
        and unet.vae.ov.compiled_models()
        and unet.text_encoder.ov.compiled_models()
    )
    webui.shared.state.textinfo_history.clear()
    second = txt2img(webui, override={**ON, "sd_ov_offload": "release"})
    assert torch.equal(second.decoded, none.decoded)
    compiles = [t for t in webui.shared.state.textinfo_history if "compiling" in t]
    assert compiles == [] and any(t.startswith("OpenVINO:") for t in webui.shared.state.textinfo_history)


def interrupt_at_the_second_unet_call(webui, monkeypatch):
    """The user presses Interrupt while the sampler runs (the webui then decodes the partial latent)."""
    from sd_ov.serve.served import ServedUNet

    real = ServedUNet.__call__
    calls = []

    def call(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            webui.shared.state.interrupt()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ServedUNet, "__call__", call)


def test_an_interrupted_job_still_decodes_its_picture_on_openvino_or_on_torch(webui, monkeypatch):
    """After an Interrupt the webui decodes the partial latent: the VAE's compile (lowvram compiles
    it at each decode) and, when OpenVINO's decode fails, the torch VAE's weights read back report
    progress while Interrupt is set; neither may cancel."""
    model = add_vae_and_text_encoder(webui)
    vae = model.first_stage_model
    lowvram = {"sd_ov_offload": "lowvram"}
    txt2img(webui, override=lowvram)  # exports everything once
    interrupt_at_the_second_unet_call(webui, monkeypatch)
    job = txt2img(webui, override=lowvram)
    assert webui.shared.state.interrupted
    assert infotext_params(job.infotexts[0])["OpenVINO VAE"] == "decode" and job.decoded is not None
    assert is_released(vae)

    def broken(self, z):
        raise RuntimeError("VAE device lost")

    monkeypatch.setattr(type(webui.sd_unet.current_unet.vae.ov), "decode", broken)
    webui.shared.state.begin()
    interrupt_at_the_second_unet_call(webui, monkeypatch)
    job = txt2img(webui)
    assert webui.shared.state.interrupted
    said = infotext_params(job.infotexts[0])["OpenVINO VAE"]
    assert said.startswith("torch (RuntimeError: VAE device lost"), said
    with torch.no_grad():
        assert torch.allclose(job.decoded, vae.decode(job.latent / 0.18215), atol=1e-6)
    monkeypatch.undo()
    webui.shared.state.begin()
    assert infotext_params(txt2img(webui).infotexts[0])["OpenVINO"] == "fp32, CPU, f32, dynamic"


def test_sdxl_text_encoders_serve_the_layers_the_webui_reads(webui):
    """SDXL's conditioner: CLIP-L's raw penultimate layer (or its clip skip with the webui's "Clip
    skip SDXL"), and where sgm and open_clip import, OpenCLIP-G's penultimate layer with the
    pooled output on the tensor, each equal to the webui's own code on torch; their weights leave
    memory under their `conditioner.embedders.<i>.` keys and come back bit-exactly."""
    from modules.sd_hijack_clip import FrozenCLIPEmbedder, FrozenCLIPEmbedderForSDXLWithCustomWords
    from safetensors.torch import save_file

    from sd_ov_webui.companions import Companions

    from ..conftest import TinyCLIPTextModel, bigg_tokens

    clip = FrozenCLIPEmbedder(TinyCLIPTextModel())
    clip.layer, clip.layer_idx = "hidden", -2  # as sd_xl_base.yaml configures it
    embedders = [FrozenCLIPEmbedderForSDXLWithCustomWords(clip)]
    try:
        from modules.sd_hijack_open_clip import FrozenOpenCLIPEmbedder2WithCustomWords

        from ..conftest import tiny_open_clip_embedder

        embedders.append(FrozenOpenCLIPEmbedder2WithCustomWords(tiny_open_clip_embedder()))
    except ImportError:  # CI's venv: no sgm / open_clip (tests/engine/test_sdxl.py says where they are)
        pass
    model = webui.shared.sd_model
    model.conditioner = SimpleNamespace(embedders=embedders)
    state = {f"model.diffusion_model.{k}": v for k, v in model.model.diffusion_model.state_dict().items()}
    for i, embedder in enumerate(embedders):
        state.update({f"conditioner.embedders.{i}.{k}": v for k, v in embedder.wrapped.state_dict().items()})
    save_file({k: v.contiguous() for k, v in state.items()}, webui.info.filename)
    before = {k: v.clone() for k, v in state.items()}
    tokens = bigg_tokens(2, 3)
    with torch.no_grad():
        want = [e.encode_with_transformers(tokens) for e in embedders]
    webui.shared.opts.sdxl_clip_l_skip, webui.shared.opts.CLIP_stop_at_last_layers = True, 3
    with torch.no_grad():
        want_skip3 = embedders[0].encode_with_transformers(tokens)
    webui.shared.opts.sdxl_clip_l_skip = False

    notes = []
    companions = Companions()
    companions.start_job(
        SimpleNamespace(checkpoint_name="tinyckpt", checkpoint_hash="0123456789ab"), notes.append
    )
    assert notes == [] and len(companions.text_encoders) == len(embedders)
    assert is_released(clip.transformer.text_model.encoder)
    with torch.no_grad():
        got = [e.encode_with_transformers(tokens) for e in embedders]
    for ours, theirs in zip(got, want, strict=True):
        assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    expected = "CLIP-L: layer -2"
    if len(embedders) == 2:
        assert is_released(embedders[1].wrapped.model.transformer)
        assert torch.allclose(got[1].pooled, want[1].pooled, atol=1e-4)
        expected += "; OpenCLIP-G: layer -2, pooled"
    assert companions.text_encoder_infotext() == expected
    webui.shared.opts.sdxl_clip_l_skip = True  # "Clip skip SDXL" with clip skip 3
    with torch.no_grad():
        assert torch.allclose(embedders[0].encode_with_transformers(tokens), want_skip3, atol=1e-4)
    assert companions.text_encoders[0].infotext() == "layer -3"
    companions.drop()
    for i, embedder in enumerate(embedders):
        for k, v in embedder.wrapped.state_dict().items():
            assert torch.equal(v, before[f"conditioner.embedders.{i}.{k}"]), k


def test_the_int8_text_encoder_setting_reopens_the_encoder_and_says_so(webui):
    """Settings → "Text encoders with INT8 weights": the next job encodes with the INT8 entry (the
    infotext says so; the picture stays close to torch's), and turning it off goes back to FP32."""
    add_vae_and_text_encoder(webui)
    torch_job = txt2img(webui, override=OFF)
    int8_job = txt2img(webui, override={**ON, "sd_ov_text_encoder_int8": True})
    assert infotext_params(int8_job.infotexts[0])["OpenVINO text encoder"] == "clip skip 1, INT8 weights"
    assert 0 < metrics.rel_l2(int8_job.latent, torch_job.latent) < 0.05  # INT8 weights: close, not equal
    fp32_job = txt2img(webui, override={**ON, "sd_ov_text_encoder_int8": False})
    assert infotext_params(fp32_job.infotexts[0])["OpenVINO text encoder"] == "clip skip 1"
    assert metrics.rel_l2(fp32_job.latent, torch_job.latent) < 1e-5


def test_the_webuis_taesd_decode_runs_on_openvino_and_says_so(webui, monkeypatch, capsys):
    """Issue #24's TAESD: with "VAE type for decode: TAESD" the decoder the webui's own
    `sd_vae_taesd.decoder_model()` returns runs on OpenVINO (its weights' entry exported once),
    equal to torch's, and the infotext says `TAESD`; off OpenVINO the webui's function and decoder
    are its own again; a failing export leaves TAESD to torch with the reason; sd-ov never loads
    (downloads) TAESD itself."""
    from modules import sd_vae_taesd

    original = sd_vae_taesd.decoder_model
    taesd = {"sd_ov_vae": True, "sd_vae_decode_method": "TAESD"}
    job = txt2img(webui, override=taesd)
    assert infotext_params(job.infotexts[0])["OpenVINO VAE"] == "TAESD"
    decoder = original()
    assert "forward" in vars(decoder)  # served: set on the instance
    with torch.no_grad():
        expected = torch.nn.Sequential.forward(decoder, job.latent) * 2 - 1
    assert job.decoded.shape == expected.shape and torch.allclose(job.decoded, expected, atol=1e-4)
    capsys.readouterr()
    again = txt2img(webui, override=taesd)
    assert torch.equal(again.decoded, job.decoded)
    # the console says where the job's seconds went: the sampler's span, the UNet's, TAESD's
    said = re.search(
        r"\[sd-ov\] job seconds: sampling [\d.]+ s \(UNet [\d.]+ s in 4 calls\).*TAESD [\d.]+ s",
        capsys.readouterr().out,
    )
    assert said, "no seconds line"
    assert [e.manifest.component for e in cache.list_entries(webui.pkg.settings.cache_root())].count(
        "taesd"
    ) == 1

    off = txt2img(webui, enabled=False, override=taesd)
    assert "OpenVINO VAE" not in infotext_params(off.infotexts[0])
    assert sd_vae_taesd.decoder_model == original and "forward" not in vars(decoder)
    assert torch.allclose(off.decoded, torch.nn.Sequential.forward(decoder, off.latent) * 2 - 1, atol=1e-6)

    def broken(*args, **kwargs):
        raise RuntimeError("convert failed")

    monkeypatch.setattr(webui.pkg.taesd, "prepare_taesd_entry", broken)
    failed = txt2img(webui, override=taesd)
    said = infotext_params(failed.infotexts[0])["OpenVINO VAE"]
    assert said == "TAESD on torch (RuntimeError: convert failed)", said
    assert "forward" not in vars(decoder) and sd_vae_taesd.loads == ["taesd_decoder.pth"]
