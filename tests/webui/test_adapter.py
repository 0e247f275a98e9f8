"""The webui adapter (scripts/ + sd_ov_webui/) against a stand-in of the webui's modules that
keeps their names, signatures and call order (tests/webui/stub), with the real ldm UNet:
options, jobs, the per-job record in the infotext, settings, DeepCache and paste."""

from __future__ import annotations

import torch

from sd_ov.optimize import metrics
from sd_ov.optimize.sampling import latent_to_image
from sd_ov.runtime.torch_weights import is_released
from sd_ov.serve import engine

from .harness import faulty_runtime_job, infotext_params, openvino_infotext, txt2img


def test_an_option_per_checkpoint_and_automatic_picks_it(webui):
    labels = [o.label for o in webui.sd_unet.unet_options]
    assert labels == ["[OpenVINO] tinyckpt"]
    assert webui.sd_unet.get_unet_option("Automatic").label == "[OpenVINO] tinyckpt"


def test_txt2img_through_openvino_matches_torch(webui):
    webui.shared.opts.sd_unet = "None"
    torch_job = txt2img(webui)
    assert openvino_infotext(torch_job) == "off (SD Unet is None)"
    assert webui.shared.state.textinfo == "OpenVINO: off (SD Unet is None)"
    webui.shared.opts.sd_unet = "Automatic"
    ov_job = txt2img(webui)
    unet = webui.sd_unet.current_unet
    assert unet.unavailable is None and unet.record.openvino_calls == 4 and not unet.record.torch_calls
    assert openvino_infotext(ov_job) == "fp32, CPU, f32, dynamic"
    assert metrics.rel_l2(ov_job.latent, torch_job.latent) < 1e-4
    assert metrics.psnr(latent_to_image(ov_job.latent[0]), latent_to_image(torch_job.latent[0])) >= 40
    # progress reached the webui's progress area, not only the console
    assert any(t.startswith("OpenVINO:") for t in webui.shared.state.textinfo_history)


def test_sides_that_are_multiples_of_8_not_64_px_run_on_openvino(webui):
    """328x200 px (a 41x25 latent): every call on OpenVINO, the webui's torch picture."""
    webui.shared.opts.sd_unet = "None"
    torch_job = txt2img(webui, width=328, height=200)
    webui.shared.opts.sd_unet = "Automatic"
    ov_job = txt2img(webui, width=328, height=200)
    record = webui.sd_unet.current_unet.record
    assert record.openvino_calls == 4 and not record.torch_calls
    assert ov_job.latent.shape[-2:] == (25, 41)
    assert metrics.rel_l2(ov_job.latent, torch_job.latent) < 1e-4


def test_restart_reuses_the_cache(webui, monkeypatch):
    txt2img(webui)  # exports unless an earlier test did
    webui.sd_unet.current_unet.deactivate()
    webui.sd_unet.current_unet = webui.sd_unet.current_unet_option = None  # a restart
    webui.sd_unet.list_unets()
    monkeypatch.setattr(engine, "export_unet", lambda *a, **k: pytest_fail("exported again"))
    assert openvino_infotext(txt2img(webui)).startswith("fp32")
    assert any("using cached" in t for t in webui.shared.state.textinfo_history)


def pytest_fail(message):
    raise AssertionError(message)


def test_a_job_can_turn_openvino_off(webui):
    job = txt2img(webui, enabled=False)
    assert webui.sd_unet.current_unet is None
    assert openvino_infotext(job) == "off (turned off for this job)"
    assert webui.shared.opts.sd_unet == "Automatic"  # the setting is back after the job


def test_a_checkpoint_added_after_start_is_served_when_it_loads(webui, tiny_unet):
    """Copied into models/Stable-diffusion, the checkpoint list refreshed (list_models registers
    it), then loaded: its option exists by the job, so "Automatic" serves it."""
    import copy

    from .harness import checkpoint

    late = checkpoint(webui.tmp_path, "Später hinzugefügt", copy.deepcopy(tiny_unet))
    webui.shared.sd_model.sd_checkpoint_info = late  # the weights load into the same model
    webui.callbacks.model_loaded_callback(webui.shared.sd_model)
    job = txt2img(webui)
    assert webui.sd_unet.current_unet.option.model_name == "Später hinzugefügt"
    assert openvino_infotext(job) == "fp32, CPU, f32, dynamic"


def test_a_relisted_option_keeps_the_compiled_unet(webui):
    """The SD Unet list is rebuilt (its refresh button, a VAE change's model_loaded): the same
    option compares equal, so the webui keeps the UNet it has instead of compiling it again."""
    txt2img(webui)
    current = webui.sd_unet.current_unet
    webui.callbacks.model_loaded_callback(webui.shared.sd_model)
    webui.sd_unet.list_unets()
    txt2img(webui)
    assert webui.sd_unet.current_unet is current and current.served is not None


def test_automatic_without_an_openvino_option_says_why_in_the_infotext(webui):
    webui.sd_unet.unet_options.clear()  # e.g. a list made before the checkpoint existed
    job = txt2img(webui)
    assert openvino_infotext(job) == (
        "off (no OpenVINO UNet is listed for tinyckpt; refresh the SD Unet list in Settings)"
    )


def test_a_torch_job_after_an_openvino_job_says_so(webui):
    """A record per job: an extension that replaces the UNet's forward (as ControlNet does) makes
    torch serve every call, and the infotext must not repeat the previous job's claim."""
    assert openvino_infotext(txt2img(webui)) == "fp32, CPU, f32, dynamic"
    from modules import sd_unet

    unet = webui.shared.sd_model.model.diffusion_model
    unet.forward = lambda x, timesteps=None, context=None, **kw: sd_unet.original_forward(
        unet, x, timesteps, context
    )
    try:
        hooked = txt2img(webui)
    finally:
        del unet.forward
    text = openvino_infotext(hooked)
    assert text.startswith("off (") and "replaced the UNet's forward" in text, text
    assert webui.sd_unet.current_unet.record.openvino_calls == 0
    assert openvino_infotext(txt2img(webui)) == "fp32, CPU, f32, dynamic"  # and the next job is honest too


def test_per_job_override_settings_change_what_runs(webui):
    """The webui applies override_settings without onchange callbacks: the job itself must."""
    job = txt2img(webui, override={"sd_ov_device": "AUTO", "sd_ov_shape_policy": "static"})
    served = webui.sd_unet.current_unet.served
    assert served.settings.device == "AUTO" and served.plain.device == "AUTO"
    assert served.plain.compiled_shapes == [(2, 4, 32, 32, 77)]  # the static model ran
    assert openvino_infotext(job) == "fp32, AUTO, auto, static"  # AUTO: each device its own precision
    assert openvino_infotext(txt2img(webui)) == "fp32, CPU, f32, dynamic"  # restored for the next job
    assert served.plain.device == "CPU"


def test_absent_device_falls_back_to_torch_with_a_clear_message(webui):
    webui.shared.opts.sd_unet = "None"
    torch_job = txt2img(webui)
    webui.shared.opts.sd_unet = "Automatic"
    webui.shared.opts.sd_ov_device = "NPU"
    job = txt2img(webui)
    unet = webui.sd_unet.current_unet
    assert unet.served is None and "NPU" in unet.unavailable and "CPU" in unet.unavailable
    assert openvino_infotext(job).startswith("off (OpenVINO device NPU is not available")
    assert "NPU" in webui.shared.state.textinfo
    assert torch.equal(job.latent, torch_job.latent)
    # the saved device stays a choice of Settings' Dropdown (gradio 4 refuses a value it does not
    # list: Settings → Apply would fail for every section), after the devices found
    choices = webui.shared.opts.data_labels["sd_ov_device"].component_args()["choices"]
    assert choices[0] == "CPU" and choices[-1] == "NPU" and choices.count("NPU") == 1, choices
    webui.shared.opts.sd_ov_device = "CPU"  # fixed between jobs: the next job serves again
    assert "NPU" not in webui.shared.opts.data_labels["sd_ov_device"].component_args()["choices"]
    assert openvino_infotext(txt2img(webui)) == "fp32, CPU, f32, dynamic"


def test_changing_the_device_setting_reopens_the_runtime_and_registration_does_not(webui, monkeypatch):
    from sd_ov_webui.unet import OpenVINOUnet

    reopened = []
    monkeypatch.setattr(OpenVINOUnet, "reopen", lambda self: reopened.append(1))
    webui.callbacks.ui_settings_callback()  # registering again runs no callback (call=False)
    assert reopened == []
    monkeypatch.undo()
    txt2img(webui)
    served = webui.sd_unet.current_unet.served
    webui.shared.opts.set("sd_ov_device", "AUTO")  # runs the onchange callback, as Settings → Apply does
    assert served.plain is not None and served.plain.device == "AUTO"
    webui.shared.opts.set("sd_ov_device", "GPU")
    unet = webui.sd_unet.current_unet
    assert unet.served is None and "GPU" in unet.unavailable


def test_extra_conditioning_is_served_by_torch_and_the_record_says_partly(webui):
    txt2img(webui)
    unet = webui.sd_unet.current_unet
    x, t, c = torch.randn(2, 4, 32, 32), torch.ones(2), torch.randn(2, 77, 64)
    with torch.no_grad():
        out = webui.shared.sd_model.model.diffusion_model(x, t, context=c, control=[torch.zeros(1)])
        ref = unet.forward(x, t, c)
    assert unet.record.openvino_calls == 5 and unet.record.torch_calls == {
        "extra UNet inputs (control) that the compiled UNet does not take": 1
    }
    assert unet.record.infotext().startswith("partly (5/6 calls; 1 on torch: extra UNet inputs (control)")
    assert out.shape == ref.shape


def test_nan_from_openvino_finishes_the_job_on_torch_with_a_note(webui, monkeypatch):
    def nan_after_two(n, call):
        return call() if n <= 2 else call() * float("nan")

    torch_job, job, calls = faulty_runtime_job(webui, monkeypatch, nan_after_two)
    assert calls == 3  # the third call's NaN was caught; the fourth went straight to torch
    text = openvino_infotext(job)
    assert text.startswith("partly (2/4 calls; 2 on torch: the OpenVINO UNet returned NaN/inf"), text
    assert bool(torch.isfinite(job.latent).all())
    assert metrics.rel_l2(job.latent, torch_job.latent) < 1e-4


def test_an_option_for_a_checkpoint_that_is_not_loaded(webui, tiny_unet):
    """`[OpenVINO] other` chosen while tinyckpt is loaded serves tinyckpt's own UNet, and says so."""
    from .harness import checkpoint

    other = checkpoint(webui.tmp_path, "other", tiny_unet)
    webui.sd_unet.list_unets()
    webui.shared.opts.sd_unet = "[OpenVINO] other"
    job = txt2img(webui)
    params = infotext_params(job.infotexts[0])
    assert params["OpenVINO"] == "fp32, CPU, f32, dynamic"
    assert "tinyckpt's own FP32 UNet serves" in params["OpenVINO note"]
    assert webui.sd_unet.current_unet.served.source.checkpoint_name == "tinyckpt"
    assert other.model_name == "other" and "is loaded" in webui.pkg.accordion.status_html()


def test_a_model_the_engine_does_not_support_runs_on_torch_with_a_message(webui):
    class NotAnSdUnet(torch.nn.Module):  # SD3's MMDiT, Flux, an unknown class...
        in_channels = 4

        def forward(self, x, timesteps=None, context=None, **kwargs):
            return x * 0.5

    webui.shared.sd_model.model.diffusion_model = NotAnSdUnet()
    webui.sd_unet.apply_unet()
    unet = webui.sd_unet.current_unet
    assert unet.served is None and "is not supported" in unet.unavailable
    x = torch.randn(1, 4, 8, 8)
    assert torch.equal(unet.forward(x, torch.ones(1), torch.randn(1, 77, 64)), x * 0.5)


def test_checkpoint_switch_releases_the_served_unet(webui):
    import gc
    import weakref

    txt2img(webui)
    served = webui.sd_unet.current_unet.served
    (model,) = served.plain.compiled_models()
    compiled = weakref.ref(model)
    del model
    webui.sd_unet.apply_unet("None")  # what sd_models.reload_model_weights does first
    gc.collect()
    assert served.plain is None and compiled() is None  # the compiled model is gone
    # the webui loads the next checkpoint into the same Parameters: they must have their bytes
    assert not is_released(webui.shared.sd_model.model.diffusion_model)
    webui.sd_unet.apply_unet()  # ... and after loading: the (new) checkpoint's option again
    assert openvino_infotext(txt2img(webui)) == "fp32, CPU, f32, dynamic"


def test_the_torch_unet_is_freed_while_openvino_serves_and_restored_exactly(webui):
    """Issue #9's `release`: the storage goes while OpenVINO serves; switching the SD Unet off
    brings back the same bytes, and torch's picture is unchanged."""
    unet = webui.shared.sd_model.model.diffusion_model
    original = {n: p.detach().clone() for n, p in unet.named_parameters()}
    webui.shared.opts.sd_unet = "None"
    torch_job = txt2img(webui)
    webui.shared.opts.sd_unet = "Automatic"
    ov_job = txt2img(webui)
    assert is_released(unet) and all(p.untyped_storage().nbytes() == 0 for p in unet.parameters())
    assert metrics.psnr(latent_to_image(ov_job.latent[0]), latent_to_image(torch_job.latent[0])) >= 40
    webui.shared.opts.sd_unet = "None"
    again = txt2img(webui)
    assert all(torch.equal(p, original[n]) for n, p in unet.named_parameters())
    assert torch.equal(again.latent, torch_job.latent)


def test_a_torch_fallback_after_the_release_gives_torchs_output(webui):
    """A call OpenVINO cannot serve (here: an extra input) reads the weights back first."""
    webui.shared.opts.sd_unet = "None"
    torch_job = txt2img(webui)
    webui.shared.opts.sd_unet = "Automatic"
    txt2img(webui)
    unet = webui.shared.sd_model.model.diffusion_model
    assert is_released(unet)
    x, t, c = (torch.randn(2, 4, 32, 32), torch.tensor([10.0, 10.0]), torch.randn(2, 77, 64))
    out = webui.sd_unet.current_unet.forward(x, t, c, y=None, control="extra")
    assert not is_released(unet)
    webui.shared.opts.sd_unet = "None"
    from modules.sd_unet import original_forward

    with torch.no_grad():
        assert torch.equal(out, original_forward(unet, x, t, c, control="extra"))
    assert torch.equal(txt2img(webui).latent, torch_job.latent)


def test_offload_none_keeps_the_torch_unet(webui):
    txt2img(webui, override={"sd_ov_offload": "none"})
    assert not is_released(webui.shared.sd_model.model.diffusion_model)
    txt2img(webui)  # the setting back to its default: freed at the next job
    assert is_released(webui.shared.sd_model.model.diffusion_model)


def test_settings_section(webui):
    labels = webui.shared.opts.data_labels
    keys = [k for k in labels if k.startswith("sd_ov_")]
    assert set(keys) == set(webui.pkg.settings.SETTINGS_DEFAULTS)
    assert all(labels[k].section == ("openvino", "OpenVINO") for k in keys)
    assert {labels[k].category_id for k in keys} == {"sd"}  # filed under "Stable Diffusion"
    choices = labels["sd_ov_device"].component_args()["choices"]
    assert "CPU" in choices and "AUTO" in choices


def test_accordion_shows_what_will_run(webui):
    components = webui.script.ui(False)
    assert [c.label for c in components] == [
        "Use the OpenVINO UNet for this job",
        "DeepCache interval (-1: the recipe's schedule, 0: off)",
        "DeepCache branch",
        "DeepCache schedule",
    ]
    assert components[0].value is True and components[1].value() == -1  # the recipe's, by default
    assert webui.script.show(False) is webui.scripts.AlwaysVisible
    assert webui.script.infotext_fields[0][1]({"OpenVINO": "fp32"}) is True
    webui.info.calculate_shorthash()
    txt2img(webui)
    status = webui.pkg.accordion.status_html()
    assert "Cached: yes" in status and "CPU" in status and "fp32" in status
    webui.shared.opts.sd_unet = "None"
    assert "torch UNet will run" in webui.pkg.accordion.status_html()


def test_deepcache_job_records_itself_and_the_next_job_is_unaffected(webui):
    webui.shared.opts.sd_unet = "None"
    torch_job = txt2img(webui, steps=6)
    webui.shared.opts.sd_unet = "Automatic"
    cached = txt2img(webui, steps=6, deepcache=(3, 1, "uniform"))
    served = webui.sd_unet.current_unet.served
    assert served.deepcache.pattern == list("FSSFSS")  # one batched call per Euler step
    params = infotext_params(cached.infotexts[0])
    assert params["OpenVINO"] == "fp32+DeepCache3b1, CPU, f32, dynamic"
    assert params["OpenVINO DeepCache"] == "interval 3, branch 1, uniform"
    again = txt2img(webui, steps=6, deepcache=(3, 1, "uniform"))
    assert served.deepcache.pattern == list("FSSFSS")  # counting restarted with the job
    assert torch.equal(again.latent, cached.latent)
    plain = txt2img(webui, steps=6)
    assert "OpenVINO DeepCache" not in infotext_params(plain.infotexts[0])
    assert openvino_infotext(plain) == "fp32, CPU, f32, dynamic"
    assert served.deepcache.pattern == []  # nothing ran through the cache schedule
    assert metrics.rel_l2(plain.latent, torch_job.latent) < 1e-4


def test_deepcache_resets_at_the_hires_pass(webui):
    job = txt2img(webui, steps=3, deepcache=(2, 0, "uniform"), hires=True)
    served = webui.sd_unet.current_unet.served
    assert served.deepcache.pattern == list("FSF")  # the hires pass started afresh, at its own shape
    assert served.deepcache.state.full_calls == 4  # 2 in the first pass, 2 in the hires pass
    assert webui.sd_unet.current_unet.record.openvino_calls == 6  # both passes in the batch's record
    assert "interval 2, branch 0" in job.infotexts[0]


def test_pasting_an_infotext_restores_the_deepcache_choice(webui):
    job = txt2img(webui, steps=3, deepcache=(4, 2, "non-uniform"))
    components = webui.script.ui(False)
    params = infotext_params(job.infotexts[0])
    restored = [fn(params) for _, fn in webui.script.infotext_fields]
    assert restored == [True, 4, 2, "non-uniform"]
    plain = {"OpenVINO": "fp32, CPU, f32, dynamic"}
    assert [fn(plain) for _, fn in webui.script.infotext_fields][:2] == [True, 0]
    assert [fn({"Steps": "20"}) for _, fn in webui.script.infotext_fields] == [None] * 4
    assert len(components) == 4


def test_the_vae_through_openvino_matches_torch_and_says_so(webui, monkeypatch):
    """Issue #9's VAE switch: decode on OpenVINO equals torch's, the infotext names it; a failing
    OpenVINO VAE decodes on torch with the reason; switched off, the webui's own decode is back."""
    from ..conftest import TinyAutoencoderKL

    first_stage = TinyAutoencoderKL()
    webui.shared.sd_model.first_stage_model = first_stage
    torch_job = txt2img(webui, override={"sd_ov_vae": False})
    assert "decode" not in vars(first_stage)
    job = txt2img(webui, override={"sd_ov_vae": True})
    params = infotext_params(job.infotexts[0])
    assert params["OpenVINO VAE"] == "decode"
    with torch.no_grad():
        expected = first_stage.decoder(first_stage.post_quant_conv(job.latent / 0.18215))
    assert torch.allclose(job.decoded, expected, atol=1e-4, rtol=1e-3)
    assert torch.allclose(job.latent, torch_job.latent, atol=1e-4)

    def broken(self, z):
        raise RuntimeError("VAE device lost")

    monkeypatch.setattr(type(webui.sd_unet.current_unet.vae.ov), "decode", broken)
    failed = txt2img(webui, override={"sd_ov_vae": True})
    assert infotext_params(failed.infotexts[0])["OpenVINO VAE"] == "torch (RuntimeError: VAE device lost)"
    assert torch.allclose(failed.decoded, first_stage.decode(failed.latent / 0.18215), atol=1e-6)
    txt2img(webui, override={"sd_ov_vae": False})
    assert "decode" not in vars(first_stage) and webui.sd_unet.current_unet.vae is None


def test_at_cfg_1_the_negative_half_is_skipped_through_the_webuis_own_setting(webui, monkeypatch):
    """At CFG 1 an OpenVINO job asks the webui's "Ignore negative prompt during early sampling" = 1
    for that job: every UNet call has the prompt's rows only, the picture is the one the full
    batch gives, and the infotext says so; the setting is the user's again after the job. Not at
    other CFG scales, not with AND prompts, not when the setting is off."""
    from sd_ov.runtime.unet import OVUNet

    batches = []
    real_call = OVUNet.__call__

    def call(self, x, *args):
        batches.append(x.shape[0])
        return real_call(self, x, *args)

    monkeypatch.setattr(OVUNet, "__call__", call)
    full = txt2img(webui, cfg_scale=1.0, override={"sd_ov_cfg1_skip_uncond": False})
    assert set(batches) == {2} and "OpenVINO note" not in infotext_params(full.infotexts[0])
    batches.clear()
    half = txt2img(webui, cfg_scale=1.0)
    params = infotext_params(half.infotexts[0])
    assert set(batches) == {1} and len(batches) == 4, batches
    assert params["OpenVINO note"].startswith("CFG 1: the negative prompt's half of each UNet call skipped")
    assert metrics.rel_l2(half.latent, full.latent) < 1e-5  # the same picture
    assert webui.shared.opts.skip_early_cond == 0.0  # restored after the job (the webui's own restore)
    batches.clear()
    txt2img(webui, cfg_scale=7.0)  # the next job has its negative half
    assert set(batches) == {2}
    batches.clear()
    txt2img(webui, cfg_scale=7.0)
    txt2img(webui, cfg_scale=1.0, prompt="a red fox AND a blue bird")
    assert set(batches) == {2}
