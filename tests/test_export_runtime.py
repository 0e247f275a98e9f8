"""OpenVINO output equals torch's for the real ldm UNetModel, across shapes and policies."""

from __future__ import annotations

import pytest
import torch
from ldm.modules import attention

from sd_ov import engine, metrics
from sd_ov.errors import UnsupportedCallError, UnsupportedModelError
from sd_ov.ldm_unet import build_unet, describe, traceable

from .conftest import TINY_SD2, unet_inputs

TOLERANCE = 1e-4  # relative L2, FP32 both sides
SHAPES = [(b, s, s, n) for b in (1, 2, 4) for s in (32, 48) for n in (77, 154)]


@pytest.fixture(scope="module", params=["static", "dynamic"])
def ov_unet(request, tiny_entry):
    unet = engine.open_unet(tiny_entry, "CPU", "f32", request.param, max_compiled=2)
    yield unet
    unet.release()


@pytest.mark.parametrize("batch,h,w,tokens", SHAPES)
def test_openvino_matches_torch(ov_unet, tiny_unet, batch, h, w, tokens):
    x, t, c = unet_inputs(batch, h, w, tokens, 64, seed=batch * 1000 + h + tokens)
    with torch.no_grad():
        ref = tiny_unet(x, t, c)
    out = ov_unet(x, t, c)
    assert out.shape == ref.shape
    assert ref.abs().max() > 0.1  # random weights everywhere: a zero output would prove nothing
    assert metrics.rel_l2(out, ref) <= TOLERANCE


def test_static_policy_keeps_the_last_shapes(tiny_entry):
    unet = engine.open_unet(tiny_entry, shape_policy="static", max_compiled=2)
    for h in (32, 40, 48):
        unet(*unet_inputs(2, h, h, 77, 64))
    assert unet.compiled_shapes == [(2, 4, 40, 40, 77), (2, 4, 48, 48, 77)]
    assert len(unet.stats.compiles) == 3 and unet.stats.calls == 3


def test_cycling_through_more_shapes_than_kept_does_not_recompile(tiny_entry, tiny_unet):
    """cond/uncond of different lengths (77 and 154 tokens) alternate at every sampler step."""
    unet = engine.open_unet(tiny_entry, shape_policy="static", max_compiled=1)
    short, long = unet_inputs(1, 32, 32, 77, 64), unet_inputs(1, 32, 32, 154, 64)
    for _ in range(3):
        for inputs in (short, long):
            out = unet(*inputs)
    assert len(unet.stats.compiles) == 3  # 77, 154, then the dynamic model for all later calls
    assert unet.compiled_shapes == [(1, 4, 32, 32, 154), None]
    with torch.no_grad():
        assert metrics.rel_l2(out, tiny_unet(*long)) <= TOLERANCE


def test_sizes_the_unet_cannot_take_are_refused(tiny_entry):
    unet = engine.open_unet(tiny_entry)
    with pytest.raises(UnsupportedCallError, match="multiple of 4"):
        unet(*unet_inputs(2, 30, 32, 77, 64))


def test_dynamic_policy_compiles_once(tiny_entry):
    unet = engine.open_unet(tiny_entry, shape_policy="dynamic")
    for h in (32, 48):
        unet(*unet_inputs(1, h, h, 77, 64))
    assert unet.compiled_shapes == [None]


def test_dtype_device_and_scalar_timestep_preserved(tiny_entry, tiny_unet):
    unet = engine.open_unet(tiny_entry)
    x, _, c = unet_inputs(2, 32, 32, 77, 64)
    t = torch.tensor([321])  # long, one value for the batch (DDIM-style callers)
    out = unet(x.double(), t, c)
    assert out.dtype == torch.float64 and out.device == x.device
    with torch.no_grad():
        ref = tiny_unet(x, t.expand(2).float(), c)
    assert metrics.rel_l2(out, ref) <= TOLERANCE


@pytest.mark.parametrize(
    "x_shape,c_shape,why",
    [
        ((2, 9, 32, 32), (2, 77, 64), "latent channels"),
        ((2, 4, 32, 32), (2, 77, 768), "width"),
        ((2, 4, 32, 32), (3, 77, 64), "batch"),
    ],
)
def test_bad_inputs_are_refused_clearly(tiny_entry, x_shape, c_shape, why):
    unet = engine.open_unet(tiny_entry)
    with pytest.raises(UnsupportedCallError, match=why):
        unet(torch.randn(x_shape), torch.ones(x_shape[0]), torch.randn(c_shape))


def test_sd2_architecture_matches_torch(tmp_path):
    unet = build_unet(TINY_SD2, seed=1)
    entry = engine.prepare_entry(unet, tmp_path, "tiny-sd2", engine.weights_hash(unet)).entry
    x, t, c = unet_inputs(2, 32, 32, 77, 96)
    with torch.no_grad():
        ref = unet(x, t, c)
    assert metrics.rel_l2(engine.open_unet(entry)(x, t, c), ref) <= TOLERANCE


def test_traceable_restores_the_attention_the_host_installed(tiny_unet):
    def host_attention(self, x, context=None, mask=None):  # e.g. the webui's sub-quadratic one
        raise AssertionError("not used during export")

    saved = attention.CrossAttention.forward
    attention.CrossAttention.forward = host_attention
    try:
        with traceable(tiny_unet):
            assert attention.CrossAttention.forward is not host_attention
            assert not any(getattr(m, "checkpoint", False) for m in tiny_unet.modules())
        assert attention.CrossAttention.forward is host_attention
        assert any(getattr(m, "use_checkpoint", False) for m in tiny_unet.modules())
    finally:
        attention.CrossAttention.forward = saved


def test_describe_refuses_non_ldm_models():
    with pytest.raises(UnsupportedModelError, match="not supported"):
        describe(torch.nn.Linear(4, 4))


def test_nan_in_the_inputs_is_not_blamed_on_openvino(tiny_unet, tiny_entry):
    """A NaN context (from a text encoder or the host's own arithmetic) makes any UNet's output
    NaN: the served UNet says the input was already bad, not that OpenVINO failed."""
    from sd_ov.errors import NonFiniteOutputError
    from sd_ov.recipe import Recipe
    from sd_ov.served import RuntimeSettings, ServedUNet, UNetSource

    source = UNetSource(tiny_entry.path.parents[1], "tiny", tiny_entry.manifest.checkpoint_hash, tiny_unet)
    served = ServedUNet(source, Recipe(), RuntimeSettings())
    served.open()
    x, t, c = unet_inputs(1, 8, 8, 77, 64)
    c[0, 3, 5] = float("nan")
    with pytest.raises(NonFiniteOutputError, match="input context already had NaN"):
        served(x, t, c)
    served.release()
