"""The OpenVINO tab and the API: Optimize from the loaded checkpoint, its SD Unet option, delete,
cancel, bad input, and HTTP error codes through a real FastAPI app."""

from __future__ import annotations

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sd_ov.graphs.deepcache import DeepCacheConfig
from sd_ov.optimize import metrics
from sd_ov.optimize.vae_int8 import ENCODER_MIN_PSNR_DB
from sd_ov.runtime import cpu_caps as cpu_caps_module
from sd_ov.runtime.cpu_caps import CpuCaps
from sd_ov.serve import engine
from sd_ov.serve.preset import FASTEST
from sd_ov.store import cache

from .. import windows_fs
from ..conftest import unet_inputs
from .harness import infotext_params, txt2img

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
    deepcache_branch="off",
    vae_int8=False,
    preset="none",
)
# What each Optimize field's component is, in the tab: (elem_id, label).
TAB_COMPONENTS = {
    "int8": ("sd_ov_int8", "INT8"),
    "smooth_quant": ("sd_ov_sq", "SmoothQuant (INT8 full)"),
    "tome": ("sd_ov_tome", "Token merging ratio"),
    "prune": ("sd_ov_prune", "Pruning"),
    "deepcache_branch": ("sd_ov_recipe_deepcache", "DeepCache pair too (skip branch)"),
    "vae_int8": ("sd_ov_vae_int8", "INT8 VAE decoder too (served when Settings → VAE precision is auto)"),
    "preset": (
        "sd_ov_preset",
        "Preset (fastest: the fastest picture measured)",
    ),
    "prune_ratio": ("sd_ov_prune_ratio", "Pruning %"),
    "precision": ("sd_ov_recipe_precision", "Inference precision"),
    "samples": ("sd_ov_samples", "Calibration samples"),
    "prompts_text": ("sd_ov_prompts", "Calibration prompts (one per line)"),
    "sampler": ("sd_ov_sampler", "Sampler"),
    "calib_size": ("sd_ov_calib_size", "Calibration size"),
    "calib_steps": ("sd_ov_calib_steps", "Calibration steps"),
    "sizes_text": ("sd_ov_sizes", "Sizes to compile ahead"),
    "batch": ("sd_ov_batch", "Batch size"),
    "chunks": ("sd_ov_chunks", "Prompt chunks (75 tokens)"),
    "device": ("sd_ov_recipe_device", "Device"),
    "measure_size": ("sd_ov_measure_size", "Measure at"),
    "compare_picture": ("sd_ov_compare", "Compare a sample picture with torch"),
}


def optimize_in_tab(webui, progress_bar=None, **changes):
    return webui.pkg.optimize_job.run_optimize({**TAB_VALUES, **changes}, progress_bar=progress_bar)


def test_each_tab_input_reaches_its_own_form_field(webui, monkeypatch):
    """Every input is wired to the field it shows: a swapped pair of inputs would fail here."""
    import gradio as gr

    (blocks, title, elem_id), *_ = webui.callbacks.ui_tabs_callback()
    assert title == "OpenVINO" and elem_id == "sd_ov_tab"
    button = next(c for c in gr.Component.created if c.kwargs.get("elem_id") == "sd_ov_optimize")
    (_, fn, inputs, outputs) = button.events[-1]
    assert len(outputs) == 3  # the report, the cache list, the "Back to ..." button
    by_elem_id = {elem: field for field, (elem, _) in TAB_COMPONENTS.items()}
    fields = [by_elem_id[c.kwargs["elem_id"]] for c in inputs]
    assert sorted(fields) == sorted(TAB_COMPONENTS)
    assert all(c.label == TAB_COMPONENTS[f][1] for c, f in zip(inputs, fields, strict=True))
    received = []
    monkeypatch.setattr(
        webui.pkg.tab, "run_optimize", lambda values, progress_bar=None: received.append(values) or ""
    )
    fn(*[f"value of {f}" for f in fields])
    assert received == [{f: f"value of {f}" for f in TAB_COMPONENTS}]


def pair_equals_its_recipe(single, deepcache: DeepCacheConfig) -> None:
    """The recipe's DeepCache pair (INT8 hybrid + ToMe, made by Optimize from the same calibration)
    against the recipe's own model: the full call equals it, and so does the shallow call on the
    feature just cached. Each half of the recipe would break this alone: ToMe's grid taken from
    the UNet's forward, which DeepCache's graphs never call; a quantizer only one graph has."""
    made = single.manifest
    key = cache.EntryKey(
        made.checkpoint_name, made.checkpoint_hash, made.recipe.with_deepcache(deepcache.branch)
    )
    pair = cache.find(single.path.parents[1], key)[0]
    for model in ("full", "shallow"):  # both graphs carry the recipe's INT8 and its token merging
        text = pair.ir_path(model).read_text()
        assert "FakeQuantize" in text and "ScatterElementsUpdate" in text, model
    report = pair.manifest.report
    # measured 1e-6 (tiny UNet) to 2e-3 (micro, one OpenVINO thread: other kernels, a few INT8
    # rounding flips); a quantizer only one graph had would give the INT8 error itself (~0.1)
    assert report.shallow_s_per_step > 0 and report.shallow_rel_l2 <= 1e-2
    x, t, c = unet_inputs(2, 16, 16, 77, made.unet.context_dim, seed=8)
    expected = engine.open_unet(single)(x, t, c)
    runner = engine.open_deepcache(pair, deepcache)
    runner.start(deepcache)
    full, shallow = runner(x, t, c), runner(x, t, c)
    assert runner.pattern == ["F", "S"]
    assert metrics.rel_l2(full, expected) <= 1e-5  # measured 0
    assert metrics.rel_l2(shallow, expected) <= 1e-2  # as the report's shallow_rel_l2 above


@pytest.mark.parametrize("webui", ["micro"], indirect=True)  # NNCF and tracing are most of its time
def test_optimize_in_the_tab_adds_an_option_that_txt2img_uses(webui, tmp_path, monkeypatch):
    """The fastest preset: INT8 hybrid-ff + ToMe 0.5 and its DeepCache pair (f32 here: the CPU's
    bf16 verdict is pinned, engine/test_preset.py tests that choice)."""
    import gradio as gr

    monkeypatch.setattr(cpu_caps_module, "cpu_caps", lambda: CpuCaps(("FP32", "INT8"), 0.0))
    webui.shared.opts.sd_ov_cache_dir = str(tmp_path / "cache")
    webui.info.calculate_shorthash()
    said = webui.pkg.accordion.invite_html()  # no recipe, nothing measured here yet
    assert "Make the fastest recipe for <b>tinyckpt</b> (its time is known after the first picture)" in said
    bar = gr.Progress()
    message = optimize_in_tab(webui, progress_bar=bar, preset="fastest", int8="weights", tome=0.0)
    assert webui.pkg.accordion.invite_html() == ""  # it has a recipe now
    webui.script.ui(False)  # a page built now: no button to make another
    (*_, button) = [
        c for c in gr.Component.created if c.kwargs.get("elem_id") == "sd_ov_txt2img_make_fastest"
    ]
    assert button.kwargs["visible"] is False
    assert any(d.endswith(" left)") for _, d in bar.calls), bar.calls  # the time left, as measured
    assert "ready" in message and "PSNR" in message, message
    assert f"It runs with the fastest preset's DeepCache ({FASTEST.deepcache.infotext()})" in message
    assert "INT8ff ToMe0.5" in webui.pkg.tab.recipe_entries_html()
    descs = " | ".join(d for _, d in bar.calls)
    assert "calibration picture 1/2: a red apple" in descs and "compressing to INT8" in descs
    assert descs.count("calibration picture 1/2") == 1, "the pair is calibrated on the same samples"
    assert "compressing the shallow model to INT8" in descs
    assert bar.calls[-1][0] == 1.0 and webui.shared.state.job == ""  # the job ended
    label = "[OpenVINO INT8ff ToMe0.5] tinyckpt"
    assert [o.label for o in webui.sd_unet.unet_options] == ["[OpenVINO] tinyckpt", label]
    # Optimize ends in use: the new recipe is the current SD Unet, with a way back
    assert webui.shared.opts.sd_unet == label and f"<b>{label}</b> is now the current SD Unet" in message
    assert "Back to" not in webui.pkg.tab.back_to_previous_unet() and webui.shared.opts.sd_unet == "Automatic"

    webui.shared.opts.sd_unet = "None"
    torch_job = txt2img(webui)
    webui.shared.opts.sd_unet = label
    webui.shared.opts.token_merging_ratio = 0.3
    preset = FASTEST.deepcache
    job = txt2img(webui)  # nothing asked: the accordion's default runs the recipe's own schedule
    unet = webui.sd_unet.current_unet
    assert unet.unavailable is None and unet.record.openvino_calls == 4
    assert {"F", "S"} <= set(unet.served.deepcache.pattern)
    params = infotext_params(job.infotexts[0])
    assert params["OpenVINO"].startswith(f"int8ff-tome0.5+{preset.label()}"), params
    assert params["OpenVINO DeepCache"] == f"{preset.infotext()} (the recipe's)", params
    assert unet.served.entry.manifest.deepcache_schedule == preset.infotext()
    assert webui.pkg.job.pasted_deepcache(params, "interval") == -1  # pasting restores "the recipe's"
    off = infotext_params(txt2img(webui, deepcache=(0, 0, "uniform")).infotexts[0])  # the user: off
    assert off["OpenVINO DeepCache"] == f"off (the recipe's: {preset.infotext()})", off
    assert (
        unet.served.deepcache.pattern.count("S") == 0 and webui.pkg.job.pasted_deepcache(off, "interval") == 0
    )
    job = txt2img(webui)  # the next job: the recipe's schedule again
    params = infotext_params(job.infotexts[0])
    assert params["OpenVINO DeepCache"] == f"{preset.infotext()} (the recipe's)", params
    assert params["OpenVINO preset"] == "fastest" and "OpenVINO note" not in params
    assert unet.served.entry.manifest.preset == "fastest"
    listed = {r.label: r for r in webui.pkg.api.recipes_route().recipes}  # what GET /sd-ov/v1/recipes says
    assert listed["INT8ff ToMe0.5"].deepcache_branches == [0]
    pair_equals_its_recipe(unet.served.entry, DeepCacheConfig(2, 0))
    assert "webui ratio 0.3 not applied" in params["OpenVINO token merging"]
    assert metrics.rel_l2(job.latent, torch_job.latent) < 0.25
    job = txt2img(webui, deepcache=(3, 1, "uniform"))  # a branch Optimize did not make
    params = infotext_params(job.infotexts[0])
    assert params["OpenVINO"] == "int8ff-tome0.5, CPU, f32, dynamic" and "OpenVINO preset" not in params
    said = "DeepCache off: no DeepCache pair (branch 1) of INT8ff ToMe0.5: Optimize it with 'DeepCache pair"
    assert params["OpenVINO note"].startswith(said), params
    assert "webui ratio 0.3 not applied" in webui.pkg.accordion.status_html()

    # delete it from the tab: the option goes, the serving UNet was given back first, so even
    # under Windows' rules (no delete of a mapped file) nothing of it stays
    (choice,) = [c for c in webui.pkg.tab.entry_choices() if "INT8ff ToMe0.5" in c]
    cache_dir = tmp_path / "cache"
    assert len(list(cache_dir.rglob("unet_shallow.xml"))) == 1
    windows_fs.install(monkeypatch)
    said = webui.pkg.tab.delete_entry(choice)
    assert said.startswith("<p>Deleted") and "in use" not in said, said
    assert not list(cache_dir.rglob("unet_shallow.xml")), "its DeepCache pair went with it"
    assert [p.name for p in cache_dir.rglob("*int8*") if p.suffix != ".lock"] == []  # locks stay
    assert webui.sd_unet.current_unet is None
    assert [o.label for o in webui.sd_unet.unet_options] == ["[OpenVINO] tinyckpt"]
    webui.sd_unet.unet_options.append(webui.pkg.options.OpenVINOUnetOption(webui.info, unet.recipe))
    job = txt2img(webui)  # a stale label: torch serves, with the reason
    assert "Optimize" in webui.sd_unet.current_unet.unavailable
    assert infotext_params(job.infotexts[0])["OpenVINO"].startswith(
        "off (INT8ff ToMe0.5 of tinyckpt is not in"
    )


def test_cancel_in_the_tab_leaves_no_entry_and_the_next_job_works(webui, tmp_path):
    webui.shared.opts.sd_ov_cache_dir = str(tmp_path / "cache")

    def cancel_at_compression(fraction, desc=None):
        if desc and desc.startswith("compressing"):
            webui.shared.state.interrupt()  # what the Cancel button does

    message = optimize_in_tab(webui, progress_bar=cancel_at_compression, tome=0.0)
    assert "cancelled" in message and "INT8" not in webui.pkg.tab.recipe_entries_html()
    assert [o.label for o in webui.sd_unet.unet_options] == ["[OpenVINO] tinyckpt"]
    leftovers = [p for p in (tmp_path / "cache").glob("*/*") if ".tmp" in p.name or "trash" in p.name]
    assert leftovers == []
    webui.shared.state.begin()  # the next job starts as the webui starts any job
    assert infotext_params(txt2img(webui).infotexts[0])["OpenVINO"] == "fp32, CPU, f32, dynamic"


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(sizes_text="100x100"), "multiples of 16"),  # the tab's recipe merges tokens
        (dict(tome=0.9), "between 0 and 0.75"),
        (dict(prompts_text=""), "give at least one prompt"),
        (dict(device="NPU"), "NPU is not available"),
        (dict(samples=0), "samples must be between 1"),
    ],
)
def test_bad_input_is_refused_before_any_work(webui, tmp_path, changes, message):
    webui.shared.opts.sd_ov_cache_dir = str(tmp_path / "cache")
    result = optimize_in_tab(webui, **changes)
    assert "Cannot optimize" in result and message in result, result
    assert not (tmp_path / "cache").exists()


@pytest.fixture
def api(webui, tmp_path):
    app = FastAPI()
    webui.callbacks.app_started_callback(None, app)
    webui.shared.opts.sd_ov_cache_dir = str(tmp_path / "cache")
    return TestClient(app)


SMALL = {
    "int8": "weights",
    "calib_size": "128x128",
    "measure_size": "128x128",
    "sizes_text": "",
    "compare_picture": False,
    "deepcache_branch": "off",  # a pair is made by default; only test_api_optimizes_and_lists makes one
}


@pytest.mark.parametrize("webui", ["micro"], indirect=True)  # NNCF and tracing are most of its time
def test_api_optimizes_and_lists(api):
    default_pair = {k: v for k, v in SMALL.items() if k != "deepcache_branch"}
    done = api.post("/sd-ov/v1/optimize", json=default_pair)
    assert done.status_code == 200, done.text
    assert done.json()["label"] == "[OpenVINO INT8w] tinyckpt" and done.json()["report"]["speedup"] > 0
    assert done.json()["deepcache_branch"] == 0 and done.json()["deepcache_note"] == ""  # a pair by default
    assert done.json()["current"] is True and done.json()["previous_unet"] == "Automatic"  # in use at once
    listed = api.get("/sd-ov/v1/recipes").json()["recipes"]
    assert [r["label"] for r in listed] == ["INT8w"]  # the FP32 IR it started from went with the run
    assert listed[0]["option"] == "[OpenVINO INT8w] tinyckpt" and listed[0]["deepcache_branches"] == [0]


@pytest.mark.parametrize("webui", ["micro"], indirect=True)  # NNCF and tracing are most of its time
def test_optimize_makes_an_int8_vae_decoder_that_decodes_while_the_vae_precision_is_auto(
    api, webui, monkeypatch
):
    """Issue #24's INT8 VAE: Optimize calibrates it on the latents its calibration pictures
    decoded and measures it against the torch VAE's pictures; from the next job on, "auto" decodes
    with it (the infotext says so) close to the float decoder; f32 gives the float decoder back."""
    import openvino as ov

    from .harness import add_vae_and_text_encoder

    add_vae_and_text_encoder(webui)
    vae_on = {"sd_ov_vae": True, "sd_ov_vae_precision": "auto"}
    before = txt2img(webui, override=vae_on)
    assert infotext_params(before.infotexts[0])["OpenVINO VAE"] in ("decode", "decode (bf16)")
    form = {**SMALL, "int8": "hybrid", "samples": 2, "calib_steps": 2, "prompts_text": "an apple\na car"}
    # offline, with live previews on: the webui's own jobs would download the preview decoder and
    # fail; Optimize's calibration pictures turn previews off and never ask for it
    from modules import sd_vae_approx

    monkeypatch.setattr(sd_vae_approx, "downloadable", False)
    done = api.post("/sd-ov/v1/optimize", json={**form, "vae_int8": True})
    assert done.status_code == 200, done.text
    monkeypatch.setattr(sd_vae_approx, "downloadable", True)
    made = done.json()["vae_decoder"]
    assert made["label"].startswith("INT8 VAE decoder") and 20 <= made["psnr_db"] < 200, made  # close
    kept = made["encoder_psnr_db"] >= ENCODER_MIN_PSNR_DB  # the INT8 encoder only where it is close
    assert made["label"] == "INT8 VAE decoder and encoder" if kept else "encoder float" in made["label"], made
    decoders = [
        e
        for e in cache.list_entries(webui.pkg.settings.cache_root())
        if e.manifest.component == "vae" and e.manifest.recipe.int8 == "full"
    ]
    assert len(decoders) == 1 and decoders[0].manifest.calibration == {"samples": 2}
    graph = ov.Core().read_model(decoders[0].ir_path("decoder"))
    assert any(op.get_type_name() == "FakeQuantize" for op in graph.get_ops())

    int8 = txt2img(webui, override=vae_on)
    assert infotext_params(int8.infotexts[0])["OpenVINO VAE"] == "decode (int8)"
    f32 = txt2img(webui, override={**vae_on, "sd_ov_vae_precision": "f32"})
    assert infotext_params(f32.infotexts[0])["OpenVINO VAE"] == "decode"
    assert torch.equal(int8.latent, f32.latent)  # only the decoder changed
    assert 0 < metrics.rel_l2(int8.decoded, f32.decoded) < 0.2


def test_api_refuses_unknown_mistyped_and_out_of_range_fields_with_422(api):
    assert api.post("/sd-ov/v1/optimize", json={"int9": "x"}).status_code == 422  # unknown field
    assert api.post("/sd-ov/v1/optimize", json={"tome": "lots"}).status_code == 422  # wrong type
    bad = api.post("/sd-ov/v1/optimize", json={"sizes_text": "100x100"})
    assert bad.status_code == 422 and "multiples of 8" in bad.json()["detail"]


def test_api_answers_409_while_a_job_runs(api):
    from modules import call_queue

    with call_queue.queue_lock:  # a txt2img job is running
        busy = api.post("/sd-ov/v1/optimize", json=SMALL)
    assert busy.status_code == 409 and "a job is running" in busy.json()["detail"]


def test_api_answers_500_when_optimize_fails_and_keeps_serving(api, webui, monkeypatch):
    from modules import call_queue

    def broken(*args, **kwargs):
        raise RuntimeError("compile failed: out of device memory")

    monkeypatch.setattr(webui.pkg.optimize_job, "optimize_with_deepcache", broken)
    failed = api.post("/sd-ov/v1/optimize", json=SMALL)
    assert failed.status_code == 500 and "compile failed" in failed.json()["detail"]
    assert not call_queue.queue_lock.locked()  # the queue is free for the next job
    assert api.get("/sd-ov/v1/recipes").status_code == 200
    assert api.get("/sd-ov/v1/recipes").status_code == 200  # the webui keeps serving


def test_the_tab_offers_every_deepcache_branch_the_form_takes(webui, monkeypatch):
    """The tab, the accordion, Settings and the form share one range (it once was 0-3 in the tab,
    0-10 in the form)."""
    import gradio as gr

    from sd_ov import MAX_DEEPCACHE_BRANCH, parse_optimize_form
    from sd_ov.optimize.fields import optimize_defaults

    webui.callbacks.ui_tabs_callback()
    webui.script.ui(False)
    by_id = {c.kwargs.get("elem_id"): c for c in gr.Component.created}
    offered = by_id["sd_ov_recipe_deepcache"].kwargs["choices"]
    for choice in offered[1:]:
        assert parse_optimize_form(
            {**optimize_defaults(), "deepcache_branch": choice}
        ).deepcache_branch == int(choice)
    assert offered[-1] == str(MAX_DEEPCACHE_BRANCH)
    assert by_id["sd_ov_txt2img_deepcache_branch"].kwargs["maximum"] == MAX_DEEPCACHE_BRANCH
    assert (
        webui.shared.opts.data_labels["sd_ov_deepcache_branch"].component_args["maximum"]
        == MAX_DEEPCACHE_BRANCH
    )
    # Optimize makes the pair a DeepCache job asks for by default: the Settings' branch
    default = by_id["sd_ov_recipe_deepcache"].value
    assert default() == "0" and default() in offered
    monkeypatch.setitem(webui.shared.opts.data, "sd_ov_deepcache_branch", 2)
    assert default() == "2"


def test_the_same_recipe_from_the_cli_and_the_tab_is_one_entry(webui, monkeypatch, tmp_path):
    """The tab's own inputs at their defaults, with INT8 hybrid and ToMe 0.5 set (and a pruning
    ratio that pruning off makes inert), reach Optimize as the CLI's `--int8 hybrid --tome 0.5`."""
    import gradio as gr

    from sd_ov.store.cache import EntryKey
    from sd_ov.tools.cli import build_parser, optimize_form_values

    webui.callbacks.ui_tabs_callback()
    button = next(c for c in gr.Component.created if c.kwargs.get("elem_id") == "sd_ov_optimize")
    (_, fn, inputs, _) = button.events[-1]
    by_elem_id = {elem: field for field, (elem, _) in TAB_COMPONENTS.items()}
    chosen = {"int8": "hybrid", "tome": 0.5000001, "prune": "off", "prune_ratio": 30}
    values = []
    for component in inputs:
        field = by_elem_id[component.kwargs["elem_id"]]
        default = component.kwargs.get("value")
        values.append(chosen.get(field, default() if callable(default) else default))
    received = []
    monkeypatch.setattr(webui.pkg.tab, "run_optimize", lambda v, progress_bar=None: received.append(v) or "")
    fn(*values)
    from_tab = webui.pkg.optimize_job.parse_request(received[0]).recipe
    args = build_parser().parse_args(["optimize", "--int8", "hybrid", "--tome", "0.5"])
    from_cli = webui.pkg.optimize_job.parse_request(optimize_form_values(args)).recipe
    assert from_cli.key() == from_tab.key() and from_tab.label() == "INT8 ToMe0.5"
    assert EntryKey("ckpt", "a" * 64, from_cli).folder(tmp_path) == EntryKey(
        "ckpt", "a" * 64, from_tab
    ).folder(tmp_path)


@pytest.mark.parametrize("webui", ["micro"], indirect=True)  # NNCF and tracing are most of its time
def test_optimize_frees_the_text_encoder_except_while_prompts_are_encoded(webui, api, monkeypatch):
    """The text encoders' torch weights (SDXL: 3.3 GB) leave memory while Optimize exports,
    compiles, samples with the FP32 UNet and compresses; they are back, bit-exactly, for each
    calibration picture's prompts and at the end. The FP32 UNet's buffers go before each
    calibration picture is decoded."""
    from sd_ov.runtime.torch_weights import is_released
    from sd_ov.runtime.unet import OVUNet
    from sd_ov.serve import engine

    from .harness import add_vae_and_text_encoder

    model = add_vae_and_text_encoder(webui)
    encoder = model.cond_stage_model.wrapped.transformer.text_model.encoder
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    seen = {"export": [], "encode": []}
    real_prepare = engine.prepare_entry

    def prepare(*args, **kwargs):
        seen["export"].append(is_released(encoder))
        return real_prepare(*args, **kwargs)

    real_encode = type(model.cond_stage_model).encode_with_transformers

    def encode(self, tokens):
        seen["encode"].append(is_released(encoder))
        return real_encode(self, tokens)

    events = []
    real_release, real_decode = OVUNet.release_memory, type(model.first_stage_model).decode

    def release_memory(self):
        events.append("release")
        return real_release(self)

    def decode(self, z):
        events.append("decode")
        return real_decode(self, z)

    monkeypatch.setattr(OVUNet, "release_memory", release_memory)
    monkeypatch.setattr(type(model.first_stage_model), "decode", decode)
    monkeypatch.setattr(engine, "prepare_entry", prepare)
    monkeypatch.setattr(type(model.cond_stage_model), "encode_with_transformers", encode)
    done = api.post("/sd-ov/v1/optimize", json={**SMALL, "int8": "hybrid", "samples": 2, "calib_steps": 2})
    assert done.status_code == 200, done.text
    assert done.json()["deepcache_branch"] is None and done.json()["deepcache_note"] == ""  # "off" asked
    assert seen["export"] and all(seen["export"]), seen  # freed while the UNet was exported
    assert seen["encode"] and not any(seen["encode"]), seen  # whole whenever prompts were encoded
    assert events[:2] == ["release", "decode"], events  # the first calibration picture's decode
    assert not is_released(encoder)
    assert all(torch.equal(v, before[k]) for k, v in encoder.state_dict().items())


def test_a_new_optimize_field_is_one_row_of_the_table(webui, monkeypatch, tmp_path):
    """A row added to the engine's field table shows in the tab (its label, range, element id), is
    an attribute of the API's request model (its default; its bounds checked: 422) and a flag of
    the command line (its bounds checked too)."""
    import argparse

    from sd_ov.optimize import fields
    from sd_ov.tools import cli

    knob = fields.OptimizeField(
        "knob", 3, int, "Knob", "a new knob", group="shapes", widget="slider", low=1, high=5
    )
    monkeypatch.setattr(fields, "FIELDS", (*fields.FIELDS, knob))

    components = webui.pkg.tab.form_components()
    assert components["knob"].label == "Knob" and components["knob"].kwargs["maximum"] == 5
    assert components["knob"].kwargs["elem_id"] == "sd_ov_knob"

    body = webui.pkg.api.optimize_body_model()
    assert body().knob == 3
    monkeypatch.setattr(webui.pkg.api, "OptimizeBody", body)
    app = FastAPI()
    webui.callbacks.app_started_callback(None, app)
    webui.shared.opts.sd_ov_cache_dir = str(tmp_path / "cache")
    answer = TestClient(app).post("/sd-ov/v1/optimize", json={"knob": 9})
    assert answer.status_code == 422 and "knob must be between 1 and 5" in answer.json()["detail"], (
        answer.json()
    )

    parser = argparse.ArgumentParser()
    cli.add_optimize_fields(parser)
    assert cli.optimize_form_values(parser.parse_args([]))["knob"] == 3
    with pytest.raises(ValueError, match="knob must be between 1 and 5"):
        sd_ov_form_parse(cli.optimize_form_values(parser.parse_args(["--knob", "9"])))
    assert not (tmp_path / "cache").exists()


def sd_ov_form_parse(values):
    from sd_ov.optimize.form import parse_optimize_form

    return parse_optimize_form(values)


def test_the_accordions_button_makes_the_fastest_recipe_with_the_forms_defaults(webui, monkeypatch):
    """The accordion's invitation: its time from this machine (after the first picture exported
    the FP32 UNet: 25x that export's seconds, per weight), and its button runs the fastest
    preset's Optimize with the form's defaults and a progress bar; Cancel interrupts."""
    import gradio as gr

    from sd_ov import optimize_defaults

    webui.info.calculate_shorthash()
    txt2img(webui)  # the FP32 export: this machine's speed
    said = webui.pkg.accordion.invite_html()
    assert said.startswith("Make the fastest recipe for <b>tinyckpt</b> (about ") and " here)" in said, said
    webui.script.ui(False)
    (*_, button) = [
        c for c in gr.Component.created if c.kwargs.get("elem_id") == "sd_ov_txt2img_make_fastest"
    ]
    assert button.kwargs["visible"] is True  # no recipe yet: shown beside the invite
    asked = []
    monkeypatch.setattr(
        webui.pkg.accordion,
        "run_optimize",
        lambda values, progress_bar=None: asked.append((values, progress_bar)) or "made",
    )
    (_, fn, inputs, outputs) = button.events[-1]
    made, invite, status, *buttons = fn()
    assert made == "made" and invite.startswith("Make the fastest recipe") and "SD Unet setting" in status
    assert (
        buttons == [{"__type__": "update", "visible": True}] * 2
    )  # still no recipe (Optimize is a stand-in here)
    ((values, bar),) = asked
    assert values == {**optimize_defaults(), "preset": "fastest"} and bar is not None
    cancel = next(
        c for c in gr.Component.created if c.kwargs.get("elem_id") == "sd_ov_txt2img_cancel_optimize"
    )
    cancel.events[-1][1]()
    assert webui.shared.state.interrupted


def test_the_progress_bar_only_moves_forward(webui):
    """A stage's own 0..1 (a text encoder freed for a calibration picture says 0.0) keeps the bar
    where it was, with the new message."""
    import gradio as gr

    bar = gr.Progress()
    progress = webui.pkg.progress.with_progress_bar(bar)
    for message, fraction in (
        ("calibration", 0.4),
        ("checking the torch CLIP text encoder", 0.0),
        ("INT8", 0.6),
    ):
        progress(message, fraction)
    assert bar.calls == [
        (0.4, "calibration"),
        (0.4, "checking the torch CLIP text encoder"),
        (0.6, "INT8"),
    ]
