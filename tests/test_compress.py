"""INT8 recipes with real NNCF on the real ldm UNet: they convert, compile, run, stay close to torch."""

from __future__ import annotations

import pytest
import torch

from sd_ov import cache, engine, metrics
from sd_ov.calibration import CapturingUNet, digest, spread
from sd_ov.compress import matmuls_with_weights
from sd_ov.sampling import sample_euler

from .conftest import unet_inputs

# Stated tolerances (relative L2 of the UNet output against torch FP32, random weights):
WEIGHTS_TOLERANCE = 0.05  # INT8 weights, float activations (measured 0.03)
HYBRID_TOLERANCE = 0.10  # INT8 convolutions incl. activations, INT8-weight MatMuls


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
    prepared = engine.prepare_entry(tiny_unet, tmp_path, "tiny", "f" * 64, engine.int8_recipe("weights"))
    entry = prepared.entry
    assert entry.manifest["files"]["unet.bin"]["size"] < tiny_entry.manifest["files"]["unet.bin"]["size"] / 3
    assert not (entry.path / "fp32").exists()
    assert ov_error(entry, tiny_unet) <= WEIGHTS_TOLERANCE


def test_int8_hybrid_quantizes_convolutions_and_compresses_matmul_weights(tiny_unet, calibration, tmp_path):
    samples = spread(calibration, 6)
    recipe = engine.int8_recipe("hybrid", samples)
    entry = engine.prepare_entry(tiny_unet, tmp_path, "tiny", "f" * 64, recipe, calibration=samples).entry
    model = engine.open_unet(entry).model
    kinds = [op.get_type_name() for op in model.get_ops()]
    assert kinds.count("FakeQuantize") > 0
    assert len(matmuls_with_weights(model)) > 0
    held_out = calibration[1]  # a sampler call that was not among the 6 calibration samples
    assert all(held_out["x"] is not s["x"] for s in samples)
    assert ov_error(entry, tiny_unet, held_out) <= HYBRID_TOLERANCE
    assert entry.manifest["recipe"]["calibration"] == digest(samples)
    assert entry.manifest["timings"]["compress_s"] > 0


def test_recipes_are_separate_entries_and_a_bad_calibration_leaves_none(tiny_unet, calibration, tmp_path):
    a = engine.prepare_entry(tiny_unet, tmp_path, "tiny", "f" * 64, engine.int8_recipe("weights")).entry
    b = engine.prepare_entry(tiny_unet, tmp_path, "tiny", "f" * 64).entry
    assert a.path != b.path
    recipe = engine.int8_recipe("hybrid", spread(calibration, 4))
    with pytest.raises(ValueError, match="calibration samples"):
        engine.prepare_entry(tiny_unet, tmp_path, "tiny", "f" * 64, recipe, calibration=calibration[:2])
    assert {e.path for e in cache.list_entries(tmp_path)} == {a.path, b.path}
