"""LoRA as a low-rank branch of state variables on the compiled UNet (issue #10), against the real
ldm UNet with the LoRA merged into its weights (the math of the webui's Lora extension:
`W + up @ down * alpha / rank * multiplier`)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from sd_ov.graphs.lora_branch import LoraLayer, UnsupportedLoraError, concatenate
from sd_ov.optimize import metrics
from sd_ov.optimize.run import optimize
from sd_ov.optimize.sampling import sample_lcm
from sd_ov.serve import engine
from sd_ov.store.recipe import Recipe

from ..conftest import unet_inputs

# Linear layers of attention and feed-forward (3-D inputs), the time embedding (2-D), 1x1
# convolutions (proj_in / proj_out of an SD1 transformer, a ResBlock's skip connection), and 3x3
# ones as LoCon and LCM-LoRA train them: a ResBlock's conv, the stride-2 downsample, the
# upsample's conv, conv_in (4 input channels).
LAYERS = (
    "input_blocks.1.1.transformer_blocks.0.attn1.to_q",
    "input_blocks.1.1.transformer_blocks.0.attn2.to_k",
    "middle_block.1.transformer_blocks.0.ff.net.2",
    "time_embed.0",
    "input_blocks.1.1.proj_in",
    "output_blocks.0.0.skip_connection",
    "input_blocks.1.0.in_layers.2",
    "input_blocks.2.0.op",
    "output_blocks.1.2.conv",
    "input_blocks.0.0",
)
TOLERANCE = 1e-4  # rel L2, FP32 branch against torch's merged weights (measured ~1e-6)


def make_lora(unet: torch.nn.Module, layers=LAYERS, rank: int = 4, seed: int = 0, strength: float = 1.0):
    """Random LoRA matrices for `layers` and the multiplier-and-scale the webui would fold in."""
    gen = torch.Generator().manual_seed(seed)
    modules = dict(unet.named_modules())
    lora = {}
    for name in layers:
        weight = modules[name].weight.detach()
        out_f, in_f = weight.shape[0], weight[0].numel()
        down = torch.randn(rank, in_f, generator=gen) / in_f**0.5
        up = torch.randn(out_f, rank, generator=gen) * strength * weight.abs().mean() * 4
        lora[name] = LoraLayer(down.numpy(), up.numpy())
    return lora


def merged(unet: torch.nn.Module, lora: dict[str, LoraLayer]) -> torch.nn.Module:
    """Torch's answer: the updates merged into a copy's weights."""
    copy_ = copy.deepcopy(unet)
    modules = dict(copy_.named_modules())
    with torch.no_grad():
        for name, layer in lora.items():
            weight = modules[name].weight
            weight += torch.from_numpy(layer.up @ layer.down).reshape(weight.shape)
    return copy_


def run_torch(unet, inputs):
    with torch.no_grad():
        return unet(*inputs)


@pytest.fixture(scope="module")
def inputs():
    return unet_inputs(2, 16, 16, 77, 64, seed=4)


@pytest.fixture(scope="module")
def branch_unet(tiny_entry):
    """One compiled UNet with the branch for the module's tests: each sets its own LoRA set."""
    return engine.open_unet(tiny_entry, cache_compiled=False, lora=True)


@pytest.fixture
def runtime(branch_unet):
    branch_unet.set_lora({})
    return branch_unet


def test_a_lora_on_linear_1x1_and_3x3_conv_layers_equals_torch_merged(tiny_unet, runtime, inputs):
    assert set(LAYERS) <= set(runtime.lora_slots)
    base = runtime(*inputs)
    lora = make_lora(tiny_unet)
    runtime.set_lora(lora)
    with_lora = runtime(*inputs)
    expected = run_torch(merged(tiny_unet, lora), inputs)
    assert metrics.rel_l2(with_lora, expected) <= TOLERANCE
    assert metrics.rel_l2(base, expected) > 0.05, (
        "the LoRA must change the picture for this test to mean anything"
    )


def test_no_lora_gives_the_plain_models_output(tiny_entry, runtime, inputs):
    plain = engine.open_unet(tiny_entry, cache_compiled=False)(*inputs)
    assert metrics.rel_l2(runtime(*inputs), plain) <= 1e-6
    runtime.set_lora(make_lora_for(runtime))
    runtime(*inputs)
    runtime.set_lora({})  # a job without LoRA after one with
    assert metrics.rel_l2(runtime(*inputs), plain) <= 1e-6


def make_lora_for(runtime) -> dict[str, LoraLayer]:
    slot = runtime.lora_slots[LAYERS[0]]
    rng = np.random.default_rng(0)
    return {
        slot.layer: LoraLayer(
            rng.standard_normal((2, slot.in_features)), rng.standard_normal((slot.out_features, 2))
        )
    }


def test_weights_and_lora_sets_change_between_calls_without_a_recompile(tiny_unet, runtime, inputs):
    first = make_lora(tiny_unet, seed=1)
    second = make_lora(tiny_unet, layers=LAYERS[2:], rank=8, seed=2)
    runtime.set_lora(first)
    runtime(*inputs)
    compiles = dict(runtime.stats.compiles)
    for lora in (
        {name: LoraLayer(layer.down, layer.up * 0.5) for name, layer in first.items()},  # weight 0.5
        second,  # another LoRA, another rank
        concatenate([first, second]),  # both at once, concatenated along the rank
    ):
        runtime.set_lora(lora)
        expected = run_torch(merged(tiny_unet, lora), inputs)
        assert metrics.rel_l2(runtime(*inputs), expected) <= TOLERANCE
    assert runtime.stats.compiles == compiles


def test_two_loras_concatenated_equal_both_merged(tiny_unet, runtime, inputs):
    a = make_lora(tiny_unet, seed=3)
    b = make_lora(tiny_unet, layers=LAYERS[:3], rank=2, seed=4)
    both = merged(merged(tiny_unet, a), b)
    runtime.set_lora(concatenate([a, b]))
    assert metrics.rel_l2(runtime(*inputs), run_torch(both, inputs)) <= TOLERANCE


def test_layers_without_a_branch_or_of_another_shape_are_refused(tiny_unet, tiny_entry, runtime):
    missing = "input_blocks.1.0.emb_layers.9"  # no such layer in this graph
    with pytest.raises(UnsupportedLoraError, match=missing):
        runtime.set_lora({missing: LoraLayer(np.zeros((2, 32)), np.zeros((32, 2)))})
    proj_in = "input_blocks.1.1.proj_in"  # a 1x1 conv given a 3x3 LoRA
    with pytest.raises(UnsupportedLoraError, match="down"):
        runtime.set_lora({proj_in: LoraLayer(np.zeros((2, 32 * 9)), np.zeros((32, 2)))})
    wrong = make_lora(tiny_unet, layers=LAYERS[:1])
    layer = wrong[LAYERS[0]]
    with pytest.raises(UnsupportedLoraError, match="down"):
        runtime.set_lora({LAYERS[0]: LoraLayer(layer.down[:, :-1], layer.up)})
    plain = engine.open_unet(tiny_entry, cache_compiled=False)
    with pytest.raises(UnsupportedLoraError, match="without LoRA"):
        plain.set_lora(wrong)
    plain.set_lora({})  # nothing asked, nothing refused


def test_a_lora_on_an_int8_weight_compressed_base(tiny_unet, tmp_path, inputs):
    """The base weights stay INT8 constants; the branch runs beside them in f32."""
    entry = optimize(tiny_unet, tmp_path, "tiny", "f" * 64, Recipe(int8="weights"), measure=None)
    lora = make_lora(tiny_unet, seed=5)
    runtime = engine.open_unet(entry, cache_compiled=False, lora=True)
    int8_base = runtime(*inputs)
    runtime.set_lora(lora)
    expected = run_torch(merged(tiny_unet, lora), inputs)
    error = metrics.rel_l2(runtime(*inputs), expected)
    assert error <= 0.05  # INT8 weights' own error (test_compress.WEIGHTS_TOLERANCE)
    assert metrics.rel_l2(int8_base, expected) > 3 * error


def test_the_lcm_lora_path_batch_1_without_cfg_matches_torch(tiny_unet, runtime):
    """LCM-LoRA as the webui's LCM sampler runs it at CFG 1: one batch-1 call per step (no uncond
    batched in), the LoRA on every layer LCM-LoRA trains (3x3 convs included)."""
    lora = make_lora(tiny_unet, layers=tuple(runtime.lora_slots), rank=8, seed=6, strength=0.5)
    runtime.set_lora(lora)
    gen = torch.Generator().manual_seed(7)
    noise, cond = torch.randn(1, 4, 16, 16, generator=gen), torch.randn(1, 77, 64, generator=gen)
    calls = runtime.stats.calls
    served = sample_lcm(runtime, noise, cond, steps=4).latent
    expected = sample_lcm(merged(tiny_unet, lora), noise, cond, steps=4).latent
    assert runtime.stats.calls - calls == 4
    assert metrics.rel_l2(served, expected) <= 1e-3
