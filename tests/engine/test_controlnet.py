"""ControlNet's residuals as inputs of the OpenVINO UNet (sd_ov.graphs.control_inputs), against torch's
forward with the same residuals added, on the real ldm UNet class."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ldm.modules.diffusionmodules.util import timestep_embedding

from sd_ov.errors import UnsupportedCallError
from sd_ov.graphs.control_inputs import control_input_names, skip_joins
from sd_ov.graphs.ldm_unet import feature_shapes
from sd_ov.serve import engine

from ..conftest import unet_inputs


def torch_with_residuals(unet, x, t, context, residuals, y=None):
    """ControlNet's way through the UNet (cldm's ControlledUnetModel, sd-webui-controlnet's
    hook): each residual added to its skip connection, the last one to the middle block's output;
    the webui's resize where an upsampled feature meets an odd-sized skip. y: SDXL's vector."""
    return controlled_forward(unet, x, t, context, residuals, y)[0]


def controlled_forward(unet, x, t, context, residuals, y=None, branch=None, feature=None):
    """`torch_with_residuals`, and with `branch` DeepCache's calls as the bench's reference makes
    them (bench/controlnet_deepcache.py): without `feature` a full call, which also returns the
    feature entering output block N-1-branch; with it a shallow call, which runs input blocks
    0..branch, adds their residuals only, and continues from the feature."""
    n = len(unet.input_blocks)
    with torch.no_grad():
        emb = unet.time_embed(timestep_embedding(t, unet.model_channels, repeat_only=False))
        if y is not None:
            emb = emb + unet.label_emb(y)
        hs, h = [], x
        for block in unet.input_blocks[: n if feature is None else branch + 1]:
            h = block(h, emb, context)
            hs.append(h)
        first = 0 if feature is None else n - 1 - branch
        h = unet.middle_block(h, emb, context) + residuals[n] if feature is None else feature
        cached = None
        for j, block in enumerate(unet.output_blocks[first:], start=first):
            if branch is not None and j == n - 1 - branch:
                cached = h
            skip = hs.pop() + residuals[len(hs)]
            if h.shape[-2:] != skip.shape[-2:]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), emb, context)
        return unet.out(h), cached


def random_residuals(unet, batch, h, w, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *shape, generator=gen) * 0.5 for shape in feature_shapes(unet, h, w)]


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def controlled(tiny_entry):
    return engine.open_unet(tiny_entry, control=True)


def test_the_graph_takes_one_residual_per_input_block_and_one_for_the_middle(tiny_unet, controlled):
    names = control_input_names(len(tiny_unet.input_blocks))
    assert controlled.control_inputs == names
    assert controlled.extra_inputs == names  # in ControlNet's order, after x/timesteps/context
    assert len(names) == len(tiny_unet.input_blocks) + 1


@pytest.mark.parametrize("h,w", [(16, 24), (13, 9)])  # 13x9: odd sides, the webui's resize at joins
def test_openvino_with_residuals_equals_torch_with_the_same_residuals(tiny_unet, controlled, h, w):
    x, t, c = unet_inputs(2, h, w, 77, 64)
    residuals = random_residuals(tiny_unet, 2, h, w)
    expected = torch_with_residuals(tiny_unet, x, t, c, residuals)
    got = controlled(x, t, c, *residuals)
    without = torch_with_residuals(tiny_unet, x, t, c, [r * 0 for r in residuals])
    assert rel_err(expected, without) > 0.05  # the residuals change the output: the test can fail
    assert rel_err(got, expected) < 1e-4


def test_zero_residuals_give_the_plain_graphs_output(tiny_entry, tiny_unet, controlled):
    x, t, c = unet_inputs(1, 16, 16, 77, 64, seed=3)
    zeros = [torch.zeros(1, *shape) for shape in feature_shapes(tiny_unet, 16, 16)]
    plain = engine.open_unet(tiny_entry)
    np.testing.assert_allclose(controlled(x, t, c, *zeros).numpy(), plain(x, t, c).numpy(), atol=1e-5)


def test_a_residual_of_the_wrong_shape_is_refused_before_openvino_runs(tiny_unet, controlled):
    x, t, c = unet_inputs(1, 16, 16, 77, 64)
    residuals = random_residuals(tiny_unet, 1, 16, 16)
    residuals[3] = torch.zeros(1, 7, 8, 8)  # a ControlNet made for another architecture
    with pytest.raises(UnsupportedCallError, match="control.3"):
        controlled(x, t, c, *residuals)
    with pytest.raises(UnsupportedCallError, match="extra inputs"):
        controlled(x, t, c)


def test_a_graph_without_sd_skip_joins_is_refused(tiny_entry):
    import openvino as ov
    import openvino.opset13 as ops

    from sd_ov.errors import SdOvError

    p = ops.parameter([1, 4, 8, 8], ov.Type.f32, name="x")
    model = ov.Model([ops.relu(p)], [p])
    with pytest.raises(SdOvError, match="skip joins"):
        skip_joins(model)


def test_an_int8_recipes_graph_takes_the_residuals_too(micro_tome_unet, tmp_path):
    """The inputs go into any recipe's IR: an INT8 hybrid + ToMe one (FakeQuantize and token
    merging in the graph) with zero residuals gives the recipe's own output, and with residuals
    follows torch within the recipe's INT8 error."""
    from sd_ov.graphs.ldm_unet import describe
    from sd_ov.optimize.calibration import random_prompt_capture
    from sd_ov.optimize.run import optimize
    from sd_ov.store.recipe import Recipe

    unet = micro_tome_unet
    capture = random_prompt_capture(describe(unet), prompts=1, steps=3, size=(64, 64))
    entry = optimize(
        unet, tmp_path, "micro", "c" * 64, Recipe(int8="hybrid", tome=0.5, samples=3), capture, measure=None
    )
    recipe, controlled = engine.open_unet(entry), engine.open_unet(entry, control=True)
    assert any(op.get_type_name() == "FakeQuantize" for op in controlled.model.get_ops())
    x, t, c = unet_inputs(2, 16, 16, 77, 32, seed=4)
    zeros = [torch.zeros(2, *shape) for shape in feature_shapes(unet, 16, 16)]
    np.testing.assert_allclose(controlled(x, t, c, *zeros).numpy(), recipe(x, t, c).numpy(), atol=1e-5)
    residuals = random_residuals(unet, 2, 16, 16)
    expected = torch_with_residuals(unet, x, t, c, residuals)
    assert rel_err(controlled(x, t, c, *residuals), expected) < 0.25
    assert rel_err(expected, torch_with_residuals(unet, x, t, c, zeros)) > 0.25  # the check can fail


def test_the_control_model_on_openvino_matches_torch_at_any_size_and_is_cached_once(stub_modules, tmp_path):
    """cldm's layout (the stub's TinyControlNet: the real ldm blocks, a picture-sized hint brought
    down 8x): every residual as torch's, at odd latent sides, batch 2 with one hint, another size
    without a new compile; the same weights find the entry again, other weights make another."""
    from sd_webui_controlnet import TinyControlNet

    from sd_ov.runtime.control_model import OVControlModel, prepare_control_entry

    from ..conftest import TINY_SD1

    model = TinyControlNet(TINY_SD1)
    entry = prepare_control_entry(model, tmp_path, "controlnet")
    runtime = OVControlModel(entry, cache_compiled=False)
    gen = torch.Generator().manual_seed(4)
    for batch, h, w in ((2, 17, 25), (1, 8, 12)):
        x = torch.randn(batch, 4, h, w, generator=gen)
        hint = torch.rand(1, 3, 8 * h, 8 * w, generator=gen)
        t = torch.full((batch,), 700.0)
        context = torch.randn(batch, 77, TINY_SD1["context_dim"], generator=gen)
        with torch.no_grad():
            expected = model(x=x, hint=hint.expand(batch, -1, -1, -1), timesteps=t, context=context)
        got = runtime(x, hint, t, context)
        assert [g.shape for g in got] == [e.shape for e in expected]
        assert max(float((g - e).norm() / e.norm()) for g, e in zip(got, expected, strict=True)) < 1e-4
    assert len(runtime.timings) == 1  # one compile served both sizes
    assert prepare_control_entry(model, tmp_path, "controlnet").path == entry.path
    other = prepare_control_entry(TinyControlNet(TINY_SD1, seed=6), tmp_path, "controlnet")
    assert other.path != entry.path


def test_a_control_model_with_int8_weights_is_its_own_entry_a_quarter_the_size_and_close(
    stub_modules, tmp_path
):
    from sd_webui_controlnet import TinyControlNet

    from sd_ov.runtime.control_model import OVControlModel, prepare_control_entry

    from ..conftest import TINY_SD1

    model = TinyControlNet(TINY_SD1)
    fp32 = prepare_control_entry(model, tmp_path, "controlnet")
    int8 = prepare_control_entry(model, tmp_path, "controlnet", int8_weights=True)
    assert int8.path != fp32.path and int8.manifest.recipe.int8 == "weights"
    sizes = [entry.ir_path("control").with_suffix(".bin").stat().st_size for entry in (fp32, int8)]
    assert sizes[1] < 0.4 * sizes[0], sizes
    assert not list(int8.path.glob("*.fp32.*"))  # the FP32 stage is gone
    gen = torch.Generator().manual_seed(4)
    x, hint = torch.randn(2, 4, 16, 24, generator=gen), torch.rand(1, 3, 128, 192, generator=gen)
    t, context = torch.full((2,), 400.0), torch.randn(2, 77, TINY_SD1["context_dim"], generator=gen)
    with torch.no_grad():
        expected = model(x=x, hint=hint.expand(2, -1, -1, -1), timesteps=t, context=context)
    got = OVControlModel(int8, cache_compiled=False)(x, hint, t, context)
    errors = [float((g - e).norm() / e.norm()) for g, e in zip(got, expected, strict=True)]
    assert 1e-5 < max(errors) < 5e-2, errors  # INT8 weights: close, not equal
    assert prepare_control_entry(model, tmp_path, "controlnet", int8_weights=True).path == int8.path


def test_a_control_model_that_is_not_cldms_layout_is_refused(tmp_path):
    from sd_ov.errors import UnsupportedModelError
    from sd_ov.runtime.control_model import prepare_control_entry

    with pytest.raises(UnsupportedModelError, match="not a ControlNet"):
        prepare_control_entry(torch.nn.Conv2d(3, 3, 1), tmp_path, "controlnet")
    assert not list(tmp_path.glob("*/*/*.xml"))  # nothing written
