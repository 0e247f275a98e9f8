"""The webui adapter (scripts/openvino_unet.py) against a stand-in of the webui's modules that
keeps their names, signatures and call order (tests/webui_stub), with the real ldm UNet."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from sd_ov import engine, metrics
from sd_ov.sampling import latent_to_image

ROOT = Path(__file__).resolve().parents[1]
STUB = Path(__file__).resolve().parent / "webui_stub"


@pytest.fixture(scope="session")
def stub_modules():
    sys.path.insert(0, str(STUB))
    from modules import sd_hijack_unet

    sd_hijack_unet.hijack()
    yield
    sd_hijack_unet.undo()
    sys.path.remove(str(STUB))


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("webui-models")


def load_script(path: Path):
    """As modules/script_loading.load_module does it."""
    spec = importlib.util.spec_from_file_location(path.name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def webui(stub_modules, tiny_unet, tmp_path, shared_cache):
    from modules import paths, script_callbacks, scripts, sd_models, sd_unet, shared

    script_callbacks.clear_callbacks()
    shared.opts = shared.Options()
    shared.state = shared.State()
    sd_unet.current_unet = sd_unet.current_unet_option = None
    paths.models_path = str(shared_cache)
    ckpt = tmp_path / "tinyckpt.safetensors"
    unet = copy.deepcopy(tiny_unet)
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in unet.state_dict().items()}, str(ckpt))
    sd_models.checkpoints_list.clear()
    info = sd_models.CheckpointInfo(str(ckpt))
    info.register()
    shared.sd_model = SimpleNamespace(
        model=SimpleNamespace(diffusion_model=unet), sd_checkpoint_info=info, lowvram=False
    )
    module = load_script(ROOT / "scripts" / "openvino_unet.py")
    script_callbacks.ui_settings_callback()
    sd_unet.list_unets()
    yield SimpleNamespace(
        module=module,
        shared=shared,
        sd_unet=sd_unet,
        scripts=scripts,
        info=info,
        script=module.OpenVINOScript(),
        callbacks=script_callbacks,
    )
    if sd_unet.current_unet is not None:
        sd_unet.current_unet.deactivate()
    sd_unet.current_unet = sd_unet.current_unet_option = None
    script_callbacks.script_unloaded_callback()


def txt2img(webui, enabled=True, steps=4, seed=3, deepcache=(0, 0, "uniform"), hires=False):
    from modules import processing, scripts

    gen = torch.Generator().manual_seed(99)
    cond, uncond = torch.randn(1, 77, 64, generator=gen), torch.randn(1, 77, 64, generator=gen)
    runner = scripts.ScriptRunner([(webui.script, [enabled, *deepcache])])
    p = processing.StableDiffusionProcessing(
        webui.shared.sd_model,
        cond,
        uncond,
        steps=steps,
        seed=seed,
        scripts=runner,
        script_args=runner.script_args,
    )
    p.enable_hr = hires
    return processing.process_images(p)


def test_an_option_per_checkpoint_and_automatic_picks_it(webui):
    labels = [o.label for o in webui.sd_unet.unet_options]
    assert labels == ["[OpenVINO] tinyckpt"]
    assert webui.sd_unet.get_unet_option("Automatic").label == "[OpenVINO] tinyckpt"


def test_txt2img_through_openvino_matches_torch(webui):
    webui.shared.opts.sd_unet = "None"
    torch_job = txt2img(webui)
    assert "OpenVINO" not in torch_job.infotexts[0]
    webui.shared.opts.sd_unet = "Automatic"
    ov_job = txt2img(webui)
    unet = webui.sd_unet.current_unet
    assert isinstance(unet, webui.module.OpenVINOUnet) and unet.problem is None
    assert unet.served_calls == 4 and unet.ov_unet.stats.calls == 4
    assert "OpenVINO: fp32, CPU, f32, static" in ov_job.infotexts[0]
    assert metrics.rel_l2(ov_job.latent, torch_job.latent) < 1e-4
    assert metrics.psnr(latent_to_image(ov_job.latent[0]), latent_to_image(torch_job.latent[0])) >= 40
    # progress reached the webui's progress area, not only the console
    assert any(t.startswith("OpenVINO:") for t in webui.shared.state.textinfo_history)


def test_restart_reuses_the_cache(webui, monkeypatch):
    txt2img(webui)  # exports unless an earlier test did
    webui.sd_unet.current_unet.deactivate()
    webui.sd_unet.current_unet = webui.sd_unet.current_unet_option = None  # a restart
    webui.sd_unet.list_unets()
    monkeypatch.setattr(engine, "export_unet", lambda *a, **k: pytest.fail("exported again"))
    job = txt2img(webui)
    assert "OpenVINO: fp32" in job.infotexts[0]
    assert any("using cached" in t for t in webui.shared.state.textinfo_history)


def test_a_job_can_turn_openvino_off(webui):
    job = txt2img(webui, enabled=False)
    assert webui.sd_unet.current_unet is None
    assert "OpenVINO" not in job.infotexts[0]
    assert webui.shared.opts.sd_unet == "Automatic"  # the setting is back after the job


def test_absent_device_falls_back_to_torch_with_a_clear_message(webui):
    webui.shared.opts.sd_unet = "None"
    torch_job = txt2img(webui)
    webui.shared.opts.sd_unet = "Automatic"
    webui.shared.opts.sd_ov_device = "NPU"
    job = txt2img(webui)
    unet = webui.sd_unet.current_unet
    assert unet.ov_unet is None and "NPU" in unet.problem and "CPU" in unet.problem
    assert "torch served" in job.infotexts[0]
    assert "OpenVINO unavailable" in webui.shared.state.textinfo
    assert torch.equal(job.latent, torch_job.latent)


def test_changing_the_device_setting_reopens_the_runtime(webui):
    txt2img(webui)
    unet = webui.sd_unet.current_unet
    assert unet.ov_unet.device == "CPU"
    webui.shared.opts.set("sd_ov_device", "AUTO")  # runs the onchange callback, as Settings → Apply does
    assert unet.ov_unet is not None and unet.ov_unet.device == "AUTO"
    webui.shared.opts.set("sd_ov_device", "GPU")
    assert unet.ov_unet is None and "GPU" in unet.problem


def test_extra_conditioning_is_served_by_torch(webui):
    txt2img(webui)
    unet = webui.sd_unet.current_unet
    before = unet.served_calls
    x, t, c = torch.randn(2, 4, 32, 32), torch.ones(2), torch.randn(2, 77, 64)
    with torch.no_grad():
        out = webui.shared.sd_model.model.diffusion_model(x, t, context=c, control=[torch.zeros(1)])
        ref = webui.module.OpenVINOUnet.forward(unet, x, t, c)
    assert unet.served_calls == before + 1  # only the plain call went to OpenVINO
    assert out.shape == ref.shape


def test_settings_section(webui):
    labels = webui.shared.opts.data_labels
    keys = [k for k in labels if k.startswith("sd_ov_")]
    assert set(keys) == set(webui.module.SETTINGS_DEFAULTS)
    assert all(labels[k].section == ("openvino", "OpenVINO") for k in keys)
    choices = labels["sd_ov_device"].component_args()["choices"]
    assert "CPU" in choices and "AUTO" in choices


def test_accordion_shows_what_will_run(webui):
    components = webui.script.ui(False)
    assert [c.label for c in components] == [
        "Use the OpenVINO UNet for this job",
        "DeepCache interval (0: off)",
        "DeepCache branch",
        "DeepCache schedule",
    ]
    assert components[0].value is True and components[1].value() == 0
    assert webui.script.show(False) is webui.scripts.AlwaysVisible
    assert webui.script.infotext_fields[0][1]({"OpenVINO": "fp32"}) is True
    webui.info.calculate_shorthash()
    txt2img(webui)
    status = webui.module.status_html()
    assert "Cached: yes" in status and "CPU" in status and "fp32" in status
    webui.shared.opts.sd_unet = "None"
    assert "torch UNet will run" in webui.module.status_html()


def infotext_params(infotext: str) -> dict:
    """The webui's parse_generation_parameters, enough for our keys (values without commas)."""
    params, key = {}, None
    for part in infotext.split(", "):
        if ": " in part:
            key, value = part.split(": ", 1)
            params[key] = value
        elif key:
            params[key] += ", " + part
    return params


def test_deepcache_job_records_itself_and_the_next_job_is_unaffected(webui):
    webui.shared.opts.sd_unet = "None"
    torch_job = txt2img(webui, steps=6)
    webui.shared.opts.sd_unet = "Automatic"
    cached = txt2img(webui, steps=6, deepcache=(3, 1, "uniform"))
    unet = webui.sd_unet.current_unet
    assert unet.deepcache.pattern == list("FSSFSS")  # one batched call per Euler step
    assert "OpenVINO: fp32+DeepCache3b1, CPU, f32, static" in cached.infotexts[0]
    assert "OpenVINO DeepCache: interval 3, branch 1, uniform" in cached.infotexts[0]
    again = txt2img(webui, steps=6, deepcache=(3, 1, "uniform"))
    assert unet.deepcache.pattern == list("FSSFSS")  # counting restarted with the job
    assert torch.equal(again.latent, cached.latent)
    plain = txt2img(webui, steps=6)
    assert "DeepCache" not in plain.infotexts[0] and "OpenVINO: fp32, CPU" in plain.infotexts[0]
    assert unet.deepcache.pattern == []  # nothing ran through the cache schedule
    assert metrics.rel_l2(plain.latent, torch_job.latent) < 1e-4


def test_deepcache_resets_at_the_hires_pass(webui):
    job = txt2img(webui, steps=3, deepcache=(2, 0, "uniform"), hires=True)
    unet = webui.sd_unet.current_unet
    assert unet.deepcache.pattern == list("FSF")  # the hires pass started afresh, at its own shape
    assert unet.deepcache.state.full_calls == 4  # 2 in the first pass, 2 in the hires pass
    assert "interval 2, branch 0" in job.infotexts[0]


def test_pasting_an_infotext_restores_the_deepcache_choice(webui):
    job = txt2img(webui, steps=3, deepcache=(4, 2, "non-uniform"))
    components = webui.script.ui(False)
    params = infotext_params(job.infotexts[0])
    restored = [fn(params) for _, fn in webui.script.infotext_fields]
    assert restored == [True, 4, 2, "non-uniform"]
    assert [fn({"OpenVINO": "fp32, CPU, f32, static"}) for _, fn in webui.script.infotext_fields][:2] == [
        True,
        0,
    ]
    assert [fn({"Steps": "20"}) for _, fn in webui.script.infotext_fields] == [None] * 4
    assert len(components) == 4


# The OpenVINO tab: Optimize, the recipe's SD Unet option, token merging, delete, cancel.
TAB_VALUES = dict(
    int8="hybrid",
    smooth_quant=False,
    tome=0.5,
    prune="off",
    prune_ratio=20,
    precision="f32",
    samples=4,
    prompts_text="a red apple on a table\na blue car in the rain",
    sampler="Euler",
    calib_size="128x128",
    calib_steps=3,
    sizes_text="128x128",
    batch=1,
    chunks=1,
    device="CPU",
    measure_size="128x128",
    compare_picture=True,
)


def optimize_in_tab(webui, progress_bar=None, **changes):
    values = {**TAB_VALUES, **changes}
    return webui.module.run_optimize(*values.values(), progress_bar=progress_bar)


def test_the_tab_is_registered_with_its_optimize_button(webui):
    import gradio as gr

    assert list(TAB_VALUES) == list(webui.module.OPTIMIZE_DEFAULTS)  # the form's order
    (blocks, title, elem_id), *_ = webui.callbacks.ui_tabs_callback()
    assert title == "OpenVINO" and elem_id == "sd_ov_tab"
    optimize_button = next(c for c in gr.Component.created if c.kwargs.get("elem_id") == "sd_ov_optimize")
    (_, fn, inputs, outputs) = optimize_button.events[0]
    assert len(inputs) == len(TAB_VALUES) and len(outputs) == 2
    labels = [c.label for c in inputs]
    assert labels[:3] == ["INT8", "SmoothQuant (MatMuls)", "Token merging ratio"]


def test_optimize_in_the_tab_adds_an_option_that_txt2img_uses(webui, tmp_path):
    import gradio as gr

    webui.shared.opts.sd_ov_cache_dir = str(tmp_path / "cache")
    bar = gr.Progress()
    message, entries = optimize_in_tab(webui, progress_bar=bar)
    assert "ready" in message and "PSNR" in message, message
    assert "INT8 ToMe0.5" in entries
    descs = " | ".join(d for _, d in bar.calls)
    assert "calibration picture 1/2: a red apple" in descs and "compressing to INT8" in descs
    assert bar.calls[-1][0] == 1.0 and webui.shared.state.job == ""  # the job ended
    label = "[OpenVINO INT8 ToMe0.5] tinyckpt"
    assert [o.label for o in webui.sd_unet.unet_options] == ["[OpenVINO] tinyckpt", label]

    webui.shared.opts.sd_unet = "None"
    torch_job = txt2img(webui)
    webui.shared.opts.sd_unet = label
    webui.shared.opts.token_merging_ratio = 0.3
    job = txt2img(webui)
    unet = webui.sd_unet.current_unet
    assert unet.problem is None and unet.served_calls == 4
    params = infotext_params(job.infotexts[0])
    assert params["OpenVINO"].startswith("int8-tome0.5, CPU")
    assert "webui ratio 0.3 not applied" in params["OpenVINO token merging"]
    assert metrics.rel_l2(job.latent, torch_job.latent) < 0.25
    assert "webui ratio 0.3 not applied" in webui.module.status_html()

    # delete it from the tab: the option goes, the serving UNet was given back first
    (choice,) = [c for c in webui.module.entry_choices() if "INT8 ToMe0.5" in c]
    assert "Deleted" in webui.module.delete_entry(choice)
    assert webui.sd_unet.current_unet is None
    assert [o.label for o in webui.sd_unet.unet_options] == ["[OpenVINO] tinyckpt"]
    webui.shared.opts.sd_unet = label  # a stale label: torch serves, with the reason
    webui.sd_unet.current_unet_option = None
    webui.sd_unet.unet_options.append(webui.module.OpenVINOUnetOption(webui.info, unet.recipe))
    job = txt2img(webui)
    assert "Optimize" in webui.sd_unet.current_unet.problem and "torch served" in job.infotexts[0]


def test_cancel_in_the_tab_leaves_no_entry_and_bad_input_is_refused(webui, tmp_path):
    webui.shared.opts.sd_ov_cache_dir = str(tmp_path / "cache")

    class CancelAtCompression:
        calls = []

        def __call__(self, fraction, desc=None):
            if desc and desc.startswith("compressing"):
                webui.shared.state.interrupt()  # what the Cancel button does

    message, entries = optimize_in_tab(webui, progress_bar=CancelAtCompression(), tome=0.0)
    assert "cancelled" in message and "INT8" not in entries
    assert [o.label for o in webui.sd_unet.unet_options] == ["[OpenVINO] tinyckpt"]
    leftovers = [p for p in (tmp_path / "cache").glob("*/*") if ".tmp" in p.name or "trash" in p.name]
    assert leftovers == []
    message, _ = optimize_in_tab(webui, sizes_text="100x100")
    assert "Cannot optimize" in message and "multiples of 64" in message


def test_api_routes_optimize_and_list(webui, tmp_path):
    routes = {}
    app = SimpleNamespace(add_api_route=lambda path, fn, methods: routes.update({(methods[0], path): fn}))
    webui.callbacks.app_started_callback(None, app)
    assert set(routes) == {("POST", "/sd-ov/v1/optimize"), ("GET", "/sd-ov/v1/recipes")}
    webui.shared.opts.sd_ov_cache_dir = str(tmp_path / "cache")
    assert "unknown Optimize fields" in routes[("POST", "/sd-ov/v1/optimize")]({"int9": "x"})["error"]
    result = routes[("POST", "/sd-ov/v1/optimize")](
        {
            "int8": "weights",
            "calib_size": "128x128",
            "measure_size": "128x128",
            "sizes_text": "",
            "compare_picture": False,
        }
    )
    assert result["label"] == "[OpenVINO INT8w] tinyckpt" and result["report"]["speedup"] > 0, result
    listed = routes[("GET", "/sd-ov/v1/recipes")]()["recipes"]
    assert [r["label"] for r in listed] == ["FP32", "INT8w"]
