"""OpenVINO output equals torch's for the real ldm UNetModel, across shapes and policies."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from ldm.modules import attention

from sd_ov.errors import UnsupportedCallError, UnsupportedModelError
from sd_ov.graphs.ldm_unet import build_unet, describe
from sd_ov.graphs.traceable_unet import traceable
from sd_ov.optimize import metrics
from sd_ov.serve import engine
from sd_ov.store import cache

from ..conftest import MICRO, TINY_SD2, unet_inputs

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


@pytest.mark.parametrize("h,w", [(30, 32), (41, 25)])
def test_sides_that_are_not_multiples_of_64_px_match_the_webuis_torch(stub_modules, ov_unet, tiny_unet, h, w):
    """A 328x200 px picture (latent 41x25): halving rounds up (41 → 21 → 11 → 6) and doubling
    gives 12, so the webui's TorchHijackForUnet resizes at the skip joins; the IR does the same."""
    x, t, c = unet_inputs(2, h, w, 77, 64, seed=h * w)
    with torch.no_grad():
        ref = tiny_unet(x, t, c)  # openaimodel.th is the webui's (the stand-in installs it)
    out = ov_unet(x, t, c)
    assert out.shape == ref.shape == x.shape
    assert metrics.rel_l2(out, ref) <= TOLERANCE


def test_an_entry_from_before_the_any_size_trace_is_re_exported_once(micro_unet, tmp_path):
    root = tmp_path / "cache"
    entry = engine.prepare_entry(micro_unet, root, "micro", "h").entry
    assert entry.manifest.unet.size_multiple == 1
    old = replace(entry.manifest, unet=replace(entry.manifest.unet, latent_multiple=0))
    cache._write_manifest(entry.path / cache.MANIFEST, old)  # as an older sd-ov wrote it
    found = cache.find(root, cache.EntryKey("micro", "h", entry.manifest.recipe))[0]
    assert found.manifest.unet.size_multiple == 2  # the micro UNet's downsample, as before
    again = engine.prepare_entry(micro_unet, root, "micro", "h")
    assert again.exported and "multiples of 64 px" in again.rebuilt_because
    assert again.entry.manifest.unet.size_multiple == 1
    assert not engine.prepare_entry(micro_unet, root, "micro", "h").exported


def test_sizes_the_ir_cannot_take_are_refused(tiny_entry):
    """A ToMe recipe's 2x2 windows need even latent sides: the runtime refuses odd ones (the
    adapter then serves that call on torch) instead of failing inside OpenVINO."""
    unet = engine.open_unet(tiny_entry)
    unet.latent_multiple = 2
    with pytest.raises(UnsupportedCallError, match="multiples of 16 px"):
        unet(*unet_inputs(2, 41, 32, 77, 64))


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


def test_a_batch_split_into_calls_gives_the_same_output(tiny_entry, tiny_unet):
    """`max_batch` (lowvram): cond and uncond as two calls, each row as torch computes it; a
    timestep given once for the batch goes to every call."""
    unet = engine.open_unet(tiny_entry, shape_policy="dynamic")
    x, t, c = unet_inputs(2, 32, 32, 77, 64)
    whole = unet(x, t, c)
    unet.max_batch = 1
    calls = unet.stats.calls
    split = unet(x, t, c)
    assert unet.stats.calls == calls + 2 and split.shape == whole.shape
    assert metrics.rel_l2(split, whole) <= 1e-5
    with torch.no_grad():
        assert metrics.rel_l2(unet(x, t[:1], c), tiny_unet(x, t[:1].expand(2), c)) <= TOLERANCE


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
    """SD2's linear projections and heads by channel count, batched and at SD2-v's 768² (96²
    latent); v-prediction is the webui's denoiser's arithmetic, outside the UNet."""
    unet = build_unet(TINY_SD2, seed=1)
    entry = engine.prepare_entry(unet, tmp_path, "tiny-sd2", engine.weights_hash(unet)).entry
    served = engine.open_unet(entry)
    for batch, side in ((2, 32), (1, 96)):
        x, t, c = unet_inputs(batch, side, side, 77, 96, seed=side)
        with torch.no_grad():
            ref = unet(x, t, c)
        assert metrics.rel_l2(served(x, t, c), ref) <= TOLERANCE


@pytest.mark.parametrize("channels", [9, 8])
def test_inpainting_and_instruct_pix2pix_unets_match_torch(tmp_path, channels):
    """Inpainting (9 channels: latent, mask, masked picture) and instruct-pix2pix (8) UNets: the
    webui concatenates the image conditioning (c_concat) into x before the UNet's forward."""
    unet = build_unet({**MICRO, "in_channels": channels}, seed=2)
    entry = engine.prepare_entry(unet, tmp_path, f"tiny-{channels}ch", engine.weights_hash(unet)).entry
    assert entry.manifest.unet.in_channels == channels
    x, t, c = unet_inputs(2, 40, 24, 77, 32, in_channels=channels, seed=channels)
    with torch.no_grad():
        ref = unet(x, t, c)
    out = engine.open_unet(entry)(x, t, c)
    assert out.shape == ref.shape == (2, 4, 40, 24)
    assert metrics.rel_l2(out, ref) <= TOLERANCE


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
    from sd_ov.runtime.settings import RuntimeSettings
    from sd_ov.serve.served import ServedUNet
    from sd_ov.serve.unet_source import UNetSource
    from sd_ov.store.recipe import Recipe

    source = UNetSource(tiny_entry.path.parents[1], "tiny", tiny_entry.manifest.checkpoint_hash, tiny_unet)
    served = ServedUNet(source, Recipe(), RuntimeSettings())
    served.open()
    x, t, c = unet_inputs(1, 8, 8, 77, 64)
    c[0, 3, 5] = float("nan")
    with pytest.raises(NonFiniteOutputError, match="input context already had NaN"):
        served(x, t, c)
    served.release()


def test_an_export_runs_the_unet_once_and_its_graph_matches_torch(micro_unet):
    """The converter traces once: torch's trace check (a second trace and two more forwards, 60 % of
    a conversion) is off, and what guards the graph is comparing its output with torch's."""
    from sd_ov.graphs.export import convert_unet
    from sd_ov.runtime.ov_core import get_core

    calls = []
    hook = micro_unet.out.register_forward_hook(lambda *_: calls.append(1))
    try:
        model = convert_unet(micro_unet, describe(micro_unet))
    finally:
        hook.remove()
    assert len(calls) == 1
    x, t, c = unet_inputs(2, 8, 12, 77, MICRO["context_dim"])
    out = get_core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(
        {"x": x, "timesteps": t, "context": c}
    )
    with torch.no_grad():
        assert metrics.rel_l2(torch.from_numpy(out[0]), micro_unet(x, t, c)) < 1e-5
