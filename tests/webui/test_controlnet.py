"""sd-webui-controlnet's jobs through the adapter (its hook's stand-in: tests/webui/stub/
sd_webui_controlnet.py): served on OpenVINO with the units' residuals, matching torch's job; unit
types that change torch's attention stay on torch, with the reason."""

from __future__ import annotations

import pytest
import torch

from ..conftest import TINY_SD1
from .harness import OPENVINO_SAYS, infotext_params, openvino_infotext, openvino_runtime_error, txt2img


@pytest.fixture(scope="module")
def control_model(stub_modules):
    from sd_webui_controlnet import PlugableControlModel, TinyControlNet

    return PlugableControlModel(TinyControlNet(TINY_SD1))


def hint(p):
    gen = torch.Generator().manual_seed(11)
    return torch.rand(1, 3, p.height, p.width, generator=gen)  # the picture's size, as the extension's


def controlnet(control_model, *kinds, weight=0.8, soft=False):
    from sd_webui_controlnet import ControlModelType, ControlNetScript, ControlParams

    kinds = kinds or ("ControlNet",)
    units = [
        lambda p, kind=kind: ControlParams(
            control_model, hint(p), weight, control_model_type=ControlModelType[kind], soft_injection=soft
        )
        for kind in kinds
    ]
    return ControlNetScript(units)


def torch_job(webui, **job):
    webui.shared.opts.sd_unet = "None"
    try:
        return txt2img(webui, **job)
    finally:
        webui.shared.opts.sd_unet = "Automatic"


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


def test_a_controlnet_job_runs_on_openvino_and_matches_torchs(webui, control_model):
    size = dict(width=200, height=136)  # a 25x17 latent: odd sides too
    reference = torch_job(webui, also=[controlnet(control_model, soft=True)], **size)
    without = torch_job(webui, **size)
    # the ControlNet changes the picture (20x the tolerance below)
    assert rel_err(reference.latent, without.latent) > 0.02

    job = txt2img(webui, also=[controlnet(control_model, soft=True)], **size)
    served = webui.sd_unet.current_unet
    assert served.record.openvino_calls == 4 and not served.record.torch_calls
    assert rel_err(job.latent, reference.latent) < 1e-3
    params = infotext_params(job.infotexts[0])
    assert params["OpenVINO"] == "fp32, CPU, f32, dynamic"
    assert params["OpenVINO ControlNet"].startswith("1 unit (ControlNet): residuals into the OpenVINO UNet")
    assert not served.weights.resident  # the torch UNet's weights stayed freed: ControlNet ran without them

    unet = webui.shared.sd_model.model.diffusion_model
    assert "forward" not in vars(unet) or vars(unet)["forward"].__func__ is type(unet).forward  # restored
    plain = txt2img(webui, **size)  # the next job without ControlNet: the IR's graph again
    assert not served.served.with_control and openvino_infotext(plain) == "fp32, CPU, f32, dynamic"
    assert "OpenVINO ControlNet" not in infotext_params(plain.infotexts[0])
    assert rel_err(plain.latent, without.latent) < 1e-3


def test_two_units_with_deepcache_its_shallow_calls_take_their_own_blocks_residuals(
    webui, control_model, tiny_unet, monkeypatch
):
    """Issue #24: ControlNet with DeepCache. The pair is opened with the residual inputs; the
    control models run at every call, shallow ones too; each call of the job equals torch's
    ControlNet forward cached the same way (bench/controlnet_deepcache.py's reference), given
    the residuals ControlNet's forward made for it; the infotext says both."""
    from sd_ov.graphs.deepcache import DeepCacheUNet

    from ..engine.test_controlnet import controlled_forward

    calls = []
    call = DeepCacheUNet.__call__

    def recorded(self, x, t, c, *y, control=()):
        out = call(self, x, t, c, *y, control=control)
        calls.append((self.pattern[-1], x, t, c, list(control), out))
        return out

    monkeypatch.setattr(DeepCacheUNet, "__call__", recorded)
    units = controlnet(control_model, "ControlNet", "ControlNetUnion", weight=0.5)
    reference = torch_job(webui, also=[units])
    job = txt2img(webui, also=[units], deepcache=(2, 0, "uniform"))
    params = infotext_params(job.infotexts[0])
    assert params["OpenVINO"] == "fp32+DeepCache2b0, CPU, f32, dynamic", params
    assert params["OpenVINO DeepCache"] == "interval 2, branch 0, uniform"
    assert params["OpenVINO ControlNet"] == (
        "2 units (ControlNet, ControlNetUnion): residuals into the OpenVINO UNet, some control models on "
        "torch (ControlNetUnion units' control models run on torch)"
    )
    assert "OpenVINO note" not in params
    assert [kind for kind, *_ in calls] == ["F", "S", "F", "S"]
    feature = None
    for i, (kind, x, t, c, residuals, out) in enumerate(calls):
        assert len(residuals) == len(tiny_unet.input_blocks) + 1
        if i:  # the control models ran at this call (shallow ones too): fresh residuals
            assert rel_err(residuals[0], calls[i - 1][4][0]) > 1e-3
        cached = None if kind == "F" else feature
        expected, feature_now = controlled_forward(tiny_unet, x, t, c, residuals, branch=0, feature=cached)
        feature = feature_now if kind == "F" else feature
        assert rel_err(out, expected) < 1e-4, kind
    # DeepCache moved the picture, a little
    assert 1e-4 < rel_err(job.latent, reference.latent) < 0.1
    calls.clear()
    uncached = txt2img(webui, also=[units])  # the pair's full model serves a job without DeepCache
    assert "OpenVINO DeepCache" not in infotext_params(uncached.infotexts[0]) and not calls
    assert rel_err(uncached.latent, reference.latent) < 1e-3


def test_a_pair_that_cant_take_the_residuals_leaves_deepcache_off_with_a_note(
    webui, control_model, monkeypatch
):
    """The pair's shallow graph refuses ControlNet's inputs: the job runs on the OpenVINO UNet with
    its residuals, without DeepCache, and says why."""
    from sd_ov.errors import SdOvError
    from sd_ov.runtime import unet as runtime

    add = runtime.add_control_inputs

    def refusing(model, middle=True):
        if not middle:
            raise SdOvError("this UNet graph's skip joins are not one per input block (a test's)")
        return add(model, middle)

    monkeypatch.setattr(runtime, "add_control_inputs", refusing)
    units = controlnet(control_model)
    reference = torch_job(webui, also=[units])
    job = txt2img(webui, also=[units], deepcache=(2, 0, "uniform"))
    params = infotext_params(job.infotexts[0])
    assert params["OpenVINO"] == "fp32, CPU, f32, dynamic" and "OpenVINO DeepCache" not in params
    assert params["OpenVINO note"].startswith("DeepCache off: this UNet graph's skip joins"), params
    assert params["OpenVINO ControlNet"].startswith("1 unit (ControlNet): residuals into the OpenVINO UNet")
    assert rel_err(job.latent, reference.latent) < 1e-3


@pytest.mark.parametrize("kind", ["AttentionInjection", "T2I_Adapter", "ControlLoRA"])
def test_a_unit_type_openvino_cannot_serve_leaves_the_job_to_torch_with_a_reason(webui, control_model, kind):
    reference = torch_job(webui, also=[controlnet(control_model, "ControlNet", kind)])
    job = txt2img(webui, also=[controlnet(control_model, "ControlNet", kind)])
    text = openvino_infotext(job)
    assert text.startswith(f"off (ControlNet units of type {kind} change torch's attention or blocks"), text
    assert webui.sd_unet.current_unet.record.openvino_calls == 0
    assert torch.equal(job.latent, reference.latent)
    assert openvino_infotext(txt2img(webui)) == "fp32, CPU, f32, dynamic"  # the next job serves again


def test_a_call_openvino_refuses_goes_to_torch_with_controlnets_forward(webui, control_model, monkeypatch):
    """A call the compiled UNet can't take (here: every one) is made by ControlNet's own forward
    on the torch UNet, its weights brought back; the job still matches torch."""
    from sd_ov.errors import UnsupportedCallError

    reference = torch_job(webui, also=[controlnet(control_model)])
    txt2img(webui)
    runtime = type(webui.sd_unet.current_unet.served)

    def refuse(self, *args, **kwargs):
        raise UnsupportedCallError("a shape it does not take")

    monkeypatch.setattr(runtime, "__call__", refuse)
    job = txt2img(webui, also=[controlnet(control_model)])
    text = openvino_infotext(job)
    assert text.startswith("off (a shape it does not take") or "a shape it does not take" in text, text
    assert torch.equal(job.latent, reference.latent)


def counted(module):
    """How many times torch ran `module` (a list that grows at each forward)."""
    calls = []
    return calls, module.register_forward_hook(lambda *_: calls.append(1))


def test_the_control_model_on_openvino_exported_once_kept_compiled_and_set_off(webui, control_model):
    from sd_ov_webui.settings import cache_root

    size = dict(width=200, height=136)  # a picture-sized hint of odd latent sides (25x17)
    calls, hook = counted(control_model.control_model)
    try:
        reference = torch_job(webui, also=[controlnet(control_model)], **size)
        assert calls, "torch's job ran the control model"
        job = txt2img(webui, also=[controlnet(control_model)], **size)  # exports it at first use (a trace)
        served = webui.sd_unet.current_unet
        (ov_model,) = served.control_models.models.values()
        compiled = ov_model.compiled
        calls.clear()
        reads = []
        ensure = served.weights.ensure
        served.weights.ensure = lambda *a, **k: (reads.append(1), ensure(*a, **k))[1]
        try:
            again = txt2img(webui, also=[controlnet(control_model)], **size)
        finally:
            del served.weights.ensure
        assert not calls  # OpenVINO ran the control model
        webui.shared.opts.sd_ov_control_model = False
        try:
            off = txt2img(webui, also=[controlnet(control_model)], **size)
        finally:
            webui.shared.opts.sd_ov_control_model = True
        torch_ran_it = bool(calls)
        int8_on = {"sd_ov_control_model_int8": True}
        txt2img(webui, also=[controlnet(control_model)], override=int8_on, **size)  # exports (a trace)
        calls.clear()
        int8 = txt2img(webui, also=[controlnet(control_model)], override=int8_on, **size)
        assert not calls  # OpenVINO ran its INT8 entry
    finally:
        hook.remove()
    said = infotext_params(int8.infotexts[0])["OpenVINO ControlNet"]
    assert said.endswith("control models on OpenVINO (INT8 weights)"), said
    assert not torch.equal(int8.latent, job.latent) and rel_err(int8.latent, reference.latent) < 5e-2
    assert torch_ran_it  # the setting off: torch ran it, its residuals still into the OpenVINO UNet
    assert infotext_params(off.infotexts[0])["OpenVINO ControlNet"].endswith(
        "control models on torch (off in Settings → OpenVINO)"
    )
    assert openvino_infotext(off) == "fp32, CPU, f32, dynamic"
    assert rel_err(off.latent, reference.latent) < 1e-3
    assert not reads  # a ControlNet job after another reads nothing of the torch UNet back
    assert rel_err(job.latent, reference.latent) < 1e-3
    assert torch.equal(again.latent, job.latent)
    assert next(iter(served.control_models.models.values())) is ov_model
    assert ov_model.compiled is compiled  # kept compiled across jobs (its buffers given back)
    entries = list(cache_root().glob("controlnet-*/control-*/control_model.xml"))
    assert len(entries) == 2, entries  # exported once, and its INT8 weights entry
    params = infotext_params(again.infotexts[0])
    assert params["OpenVINO ControlNet"] == (
        "1 unit (ControlNet): residuals into the OpenVINO UNet, control models on OpenVINO"
    )
    assert "forward" not in vars(control_model)  # nothing of ours left on the extension's model


def test_a_failing_openvino_control_model_leaves_it_to_torch_with_a_reason(webui, monkeypatch):
    from sd_webui_controlnet import PlugableControlModel, TinyControlNet

    from sd_ov import OVControlModel

    own = PlugableControlModel(TinyControlNet(TINY_SD1, seed=6))  # its own digest: others stay served
    reference = torch_job(webui, also=[controlnet(own)])

    def fail(self, *args, **kwargs):
        raise openvino_runtime_error()  # as a device that went away would come

    monkeypatch.setattr(OVControlModel, "__call__", fail)
    job = txt2img(webui, also=[controlnet(own)])
    text = infotext_params(job.infotexts[0])["OpenVINO ControlNet"]
    why = f"the OpenVINO control model failed: {OPENVINO_SAYS}"
    assert text.endswith(f"control models on torch ({why})"), text
    assert openvino_infotext(job) == "fp32, CPU, f32, dynamic"  # the UNet still served
    assert rel_err(job.latent, reference.latent) < 1e-3
    assert "forward" not in vars(own)
