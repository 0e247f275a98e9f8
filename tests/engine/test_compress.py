"""INT8 recipes with real NNCF on the real ldm UNet: they convert, compile, run, stay close to torch."""

from __future__ import annotations

import pytest
import torch

from sd_ov.optimize import metrics
from sd_ov.optimize.calibration import CapturingUNet, digest, spread
from sd_ov.optimize.run import optimize
from sd_ov.optimize.sampling import sample_euler
from sd_ov.runtime.compress import FEED_FORWARD, RAW_INPUT_CONVS, matmuls_with_weights
from sd_ov.serve import engine
from sd_ov.store import cache
from sd_ov.store.recipe import Recipe

from ..conftest import unet_inputs

# Stated tolerances (relative L2 of the UNet output against torch FP32, random weights):
WEIGHTS_TOLERANCE = 0.05  # INT8 weights, float activations (measured 0.03)
HYBRID_TOLERANCE = 0.10  # INT8 normalized-input convolutions incl. activations, INT8-weight MatMuls


@pytest.fixture(scope="module")
def calibration(tiny_unet):
    gen = torch.Generator().manual_seed(11)
    capture = CapturingUNet(lambda x, t, c: tiny_unet(x, t, c))
    for _ in range(2):  # two "prompts"
        cond, uncond = torch.randn(1, 77, 64, generator=gen), torch.randn(1, 77, 64, generator=gen)
        with torch.no_grad():
            sample_euler(capture, torch.randn(1, 4, 32, 32, generator=gen), cond, uncond, steps=5)
    return capture.samples


def test_capture_yields_one_sample_per_call_with_the_unet_shapes(calibration):
    assert len(calibration) == 10
    first = calibration[0]
    assert first["x"].shape == (2, 4, 32, 32) and first["timesteps"].shape == (2,)
    assert first["context"].shape == (2, 77, 64)
    assert first["timesteps"][0] > calibration[4]["timesteps"][0]  # noisiest first
    picked = spread(calibration, 4)
    assert [s["timesteps"][0] for s in picked] == [calibration[i]["timesteps"][0] for i in (0, 3, 6, 9)]
    assert digest(picked) != digest(calibration[:4])


def ov_error(entry, tiny_unet, sample=None):
    """rel L2 against torch on random inputs, or on a sampler call (in-distribution) if given."""
    if sample is None:
        x, t, c = unet_inputs(2, 32, 32, 77, 64, seed=21)
    else:
        x, t, c = (torch.from_numpy(sample[k]) for k in ("x", "timesteps", "context"))
    with torch.no_grad():
        ref = tiny_unet(x, t, c)
    return metrics.rel_l2(engine.open_unet(entry)(x, t, c), ref)


def test_int8_weights(tiny_unet, tiny_entry, tmp_path):
    import openvino as ov

    from sd_ov.runtime.compress import int8_ir_bytes

    entry = optimize(tiny_unet, tmp_path, "tiny", "f" * 64, Recipe(int8="weights"), measure=None)
    written = entry.manifest.files["unet.bin"].size
    assert written < tiny_entry.manifest.files["unet.bin"].size / 3
    # the room asked for before compressing is what is written, with a margin, not the FP32 size
    estimate = int8_ir_bytes(ov.Core().read_model(str(tiny_entry.ir_path())))
    assert written <= estimate <= 1.6 * written, (written, estimate)
    assert ov_error(entry, tiny_unet) <= WEIGHTS_TOLERANCE


def activation_quantized(model, op_type: str) -> set[str]:
    """Names of `op_type` operations whose data input NNCF quantized (a FakeQuantize feeds it)."""
    return {
        op.get_friendly_name()
        for op in model.get_ops()
        if op.get_type_name() == op_type and op.input_value(0).get_node().get_type_name() == "FakeQuantize"
    }


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory):
    """One cache for both hybrid modes: the FP32 IR they start from is exported once."""
    return tmp_path_factory.mktemp("hybrid-cache")


@pytest.mark.parametrize("mode", ["hybrid", "hybrid-ff"])
def test_int8_hybrid_quantizes_normalized_convolutions_only(tiny_unet, calibration, shared_root, mode):
    recipe = Recipe(int8=mode, samples=6)
    entry = optimize(
        tiny_unet, shared_root, "tiny", "f" * 64, recipe, lambda _u, _p: calibration, measure=None
    )
    model = engine.open_unet(entry).model
    quantized = activation_quantized(model, "Convolution")
    assert any("in_layers" in name or "out_layers" in name for name in quantized)
    assert not any(RAW_INPUT_CONVS.search(name) for name in quantized)  # residual-stream inputs: FP32
    # hybrid: every MatMul weight-only; hybrid-ff: the feed-forward ones W8A8, attention's not
    w8a8 = activation_quantized(model, "MatMul")
    feed_forward = {n for n in matmuls_with_weights(model) if FEED_FORWARD.search(n)}
    assert feed_forward and w8a8 == (feed_forward if mode == "hybrid-ff" else set())
    samples = spread(calibration, 6)
    held_out = calibration[1]  # a sampler call that was not among the 6 calibration samples
    assert all(held_out["x"] is not s["x"] for s in samples)
    assert ov_error(entry, tiny_unet, held_out) <= HYBRID_TOLERANCE
    assert entry.manifest.calibration == {"samples": 6, "digest": digest(samples)}
    assert entry.manifest.timings["compress_s"] > 0
    assert entry.manifest.recipe.label() == ("INT8" if mode == "hybrid" else "INT8ff")


def test_an_empty_capture_leaves_no_entry(micro_unet, tmp_path):
    with pytest.raises(ValueError, match="captured no UNet calls"):
        optimize(
            micro_unet, tmp_path, "micro", "f" * 64, Recipe(int8="hybrid"), lambda _u, _p: [], measure=None
        )
    assert [e.manifest.recipe.name() for e in cache.list_entries(tmp_path)] == ["fp32"]
