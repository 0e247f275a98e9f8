"""SDXL's UNet (sgm UNetModel, with its vector conditioning `y`) on OpenVINO equals torch's.

The sgm package ships with Stability's generative-models (the webui has it in
repositories/generative-models), not on PyPI: these tests run where it is importable, e.g.
`PYTHONPATH=<webui>/repositories/generative-models:<webui>/repositories/stable-diffusion-stability-ai
<webui>/venv/bin/python -m pytest tests/engine/test_sdxl.py`, and are skipped elsewhere.
"""

from __future__ import annotations

import copy

import pytest
import torch

from sd_ov.graphs.deepcache import DeepCacheConfig, DeepCacheShallow
from sd_ov.graphs.ldm_unet import describe, randomize_zero_init
from sd_ov.optimize import metrics
from sd_ov.serve import engine
from sd_ov.store.recipe import Recipe

from ..conftest import bigg_tokens

openaimodel = pytest.importorskip(
    "sgm.modules.diffusionmodules.openaimodel",
    reason="sgm (Stability's generative-models, the webui's SDXL code) is not importable here",
)

TOLERANCE = 1e-4
# SDXL's architecture, small: linear projections, heads by channel count, transformer depth per
# level (none at the top one), and the vector conditioning `y` (2816 wide in SDXL).
TINY_SDXL = dict(
    adm_in_channels=40,
    num_classes="sequential",
    in_channels=4,
    out_channels=4,
    model_channels=32,
    attention_resolutions=[4, 2],
    num_res_blocks=1,
    channel_mult=[1, 2, 2],
    num_head_channels=16,
    use_spatial_transformer=True,
    use_linear_in_transformer=True,
    transformer_depth=[0, 1, 2],
    context_dim=48,
    spatial_transformer_attn_type="softmax",
    legacy=False,
)


@pytest.fixture(scope="module")
def sdxl_unet():
    torch.manual_seed(0)
    return randomize_zero_init(openaimodel.UNetModel(**TINY_SDXL).eval(), seed=0)


def inputs(batch: int, h: int, w: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 4, h, w, generator=gen),
        torch.randint(0, 1000, (batch,), generator=gen).float(),
        torch.randn(batch, 77, 48, generator=gen),
        torch.randn(batch, 40, generator=gen),
    )


def test_describe_reads_the_vector_conditioning(sdxl_unet):
    spec = describe(sdxl_unet)
    assert spec.adm_channels == 40 and spec.context_dim == 48 and spec.downsample == 4


def test_sdxl_unet_with_y_matches_torch(sdxl_unet, tmp_path):
    entry = engine.prepare_entry(sdxl_unet, tmp_path, "tiny-sdxl", engine.weights_hash(sdxl_unet)).entry
    assert entry.manifest.unet.adm_channels == 40
    served = engine.open_unet(entry)
    assert served.extra_inputs == ["y"]
    for batch, h, w in ((2, 32, 24), (1, 40, 40)):
        x, t, c, y = inputs(batch, h, w, seed=h)
        with torch.no_grad():
            ref = sdxl_unet(x, t, c, y)
        out = served(x, t, c, y)
        assert ref.abs().max() > 0.1
        assert metrics.rel_l2(out, ref) <= TOLERANCE
    with torch.no_grad():  # y matters: another vector, another output
        other = sdxl_unet(x, t, c, torch.zeros_like(y))
    assert metrics.rel_l2(other, ref) > 1e-2


def test_sdxl_deepcache_pair_with_y_matches_torch(sdxl_unet, tmp_path):
    recipe = Recipe().with_deepcache(0)
    entry = engine.prepare_entry(sdxl_unet, tmp_path, "tiny-sdxl", "h", recipe).entry
    pair = engine.open_deepcache(entry, DeepCacheConfig(2, 0, "uniform"))
    x, t, c, y = inputs(2, 32, 32, seed=3)
    with torch.no_grad():
        ref_full = sdxl_unet(x, t, c, y)
    assert metrics.rel_l2(pair(x, t, c, y), ref_full) <= TOLERANCE  # the first call is full
    feature = next(iter(pair.state.slots.values())).feature  # cached by the full call
    x2 = x + 0.1
    with torch.no_grad():
        ref_shallow = DeepCacheShallow(sdxl_unet, 0)(x2, t - 10, c, y, feature)
    assert metrics.rel_l2(pair(x2, t - 10, c, y), ref_shallow) <= TOLERANCE
    assert pair.pattern == ["F", "S"]


def test_optimize_makes_int8_recipes_of_sdxl_and_refuses_token_merging(sdxl_unet, tmp_path):
    """INT8 hybrid with its DeepCache pair, calibrated on captures that carry y (the IR's fourth
    input) and measured with it; token merging and FFN pruning are refused before any work."""
    from sd_ov.errors import UnsupportedModelError
    from sd_ov.optimize.calibration import random_prompt_capture
    from sd_ov.optimize.form import parse_optimize_form
    from sd_ov.optimize.pair import optimize_with_deepcache
    from sd_ov.optimize.run import Measure, optimizable, optimize

    for recipe in (Recipe(tome=0.5), Recipe(prune="ffn", prune_ratio=0.2)):
        with pytest.raises(UnsupportedModelError, match="SDXL"):
            optimize(sdxl_unet, tmp_path, "tiny-sdxl", "h", recipe, capture=None)
    assert not any(tmp_path.iterdir())
    assert optimizable(sdxl_unet, Recipe(int8="hybrid")).adm_channels == 40
    assert optimizable(sdxl_unet, parse_optimize_form({"preset": "fastest"}, sdxl=True).recipe)

    capture = random_prompt_capture(describe(sdxl_unet), prompts=2, steps=3, size=(128, 128))
    recipe, pair = optimize_with_deepcache(
        sdxl_unet,
        tmp_path,
        "tiny-sdxl",
        "h",
        Recipe(int8="hybrid", samples=6),
        capture,
        deepcache_branch=0,
        measure=Measure(128, 128, calls=1),
    )
    report = recipe.manifest.report
    assert recipe.manifest.calibration["samples"] == 6
    assert 0 < report.rel_l2 <= 0.25 and report.torch_s_per_step > 0
    assert pair.manifest.report.shallow_rel_l2 <= 1e-2
    served = engine.open_unet(recipe)
    assert any(op.get_type_name() == "FakeQuantize" for op in served.model.get_ops())
    x, t, c, y = inputs(2, 16, 16, seed=5)
    with torch.no_grad():
        ref = sdxl_unet(x, t, c, y)
    assert metrics.rel_l2(served(x, t, c, y), ref) <= 0.25


def test_a_lora_on_the_sdxl_graph_equals_torch_merged(sdxl_unet, tmp_path):
    """The LoRA branch on SDXL's graph: attention, feed-forward, the y embedding's Linear and a
    ResBlock's 3x3 convolution, against torch with the updates merged into the weights."""
    from .test_lora_branch import make_lora, merged

    layers = (
        "input_blocks.3.1.transformer_blocks.0.attn1.to_q",
        "input_blocks.5.1.transformer_blocks.1.attn2.to_k",
        "middle_block.1.transformer_blocks.0.ff.net.2",
        "label_emb.0.0",
        "input_blocks.1.0.in_layers.2",
    )
    entry = engine.prepare_entry(sdxl_unet, tmp_path, "tiny-sdxl", "h").entry
    runtime = engine.open_unet(entry, cache_compiled=False, lora=True)
    assert set(layers) <= set(runtime.lora_slots)
    lora = make_lora(sdxl_unet, layers)
    runtime.set_lora(lora)
    x, t, c, y = inputs(2, 16, 16, seed=9)
    with torch.no_grad():
        expected = merged(sdxl_unet, lora)(x, t, c, y)
        base = sdxl_unet(x, t, c, y)
    assert metrics.rel_l2(runtime(x, t, c, y), expected) <= TOLERANCE
    assert metrics.rel_l2(base, expected) > 0.05  # the LoRA changes the output


def test_sdxl_graph_takes_controlnets_residuals_like_torch(sdxl_unet, tmp_path):
    """SDXL's ControlNet adds one residual per input block (9 in SDXL) and one to the middle
    block's output: the graph with their inputs equals torch's blocks with them added."""
    from sd_ov.graphs.ldm_unet import feature_shapes

    from .test_controlnet import torch_with_residuals

    entry = engine.prepare_entry(sdxl_unet, tmp_path, "tiny-sdxl", engine.weights_hash(sdxl_unet)).entry
    served = engine.open_unet(entry, control=True)
    assert served.extra_inputs[0] == "y" and len(served.control_inputs) == len(sdxl_unet.input_blocks) + 1
    x, t, c, y = inputs(2, 24, 16, seed=4)
    gen = torch.Generator().manual_seed(9)
    residuals = [torch.randn(2, *shape, generator=gen) * 0.5 for shape in feature_shapes(sdxl_unet, 24, 16)]
    ref = torch_with_residuals(sdxl_unet, x, t, c, residuals, y=y)
    assert metrics.rel_l2(served(x, t, c, y, *residuals), ref) <= TOLERANCE


def test_sdxl_deepcache_pair_takes_controlnets_residuals_with_y(sdxl_unet, tmp_path):
    """ControlNet with DeepCache on SDXL: the full model takes y and every residual, the shallow
    one y, the cached feature and the residuals of its own input blocks; each equals torch's."""
    from sd_ov.graphs.ldm_unet import feature_shapes

    from .test_controlnet import controlled_forward

    entry = engine.prepare_entry(sdxl_unet, tmp_path, "tiny-sdxl", "h", Recipe().with_deepcache(0)).entry
    pair = engine.open_deepcache(entry, DeepCacheConfig(2, 0, "uniform"), control=True)
    assert pair.shallow.extra_inputs == ["y", "feature", "control.0"]
    x, t, c, y = inputs(2, 24, 16, seed=5)
    gen = torch.Generator().manual_seed(10)
    feature = None
    for _ in range(2):
        residuals = [
            torch.randn(2, *shape, generator=gen) * 0.5 for shape in feature_shapes(sdxl_unet, 24, 16)
        ]
        ref, cached = controlled_forward(sdxl_unet, x, t, c, residuals, y=y, branch=0, feature=feature)
        assert metrics.rel_l2(pair(x, t, c, y, control=residuals), ref) <= TOLERANCE
        feature, x, t = cached, x * 0.9, t - 10
    assert pair.pattern == ["F", "S"]


@pytest.fixture(scope="module")
def tiny_bigg():
    from ..conftest import tiny_open_clip_embedder

    return tiny_open_clip_embedder()


def test_sdxl_open_clip_penultimate_and_pooled_match_sgm(tiny_bigg, tmp_path):
    """OpenCLIP bigG's graph, from the token embeddings the host looked up, equals sgm's own
    encode_with_transformer: the penultimate layer (raw) and the pooled, projected end token."""
    from sd_ov.runtime import text_encoder

    model = tiny_bigg.model
    entry = text_encoder.prepare_text_encoder_entry(model, tmp_path, "tiny-sdxl", "h", kind="open_clip")
    assert entry.manifest.component == "text_encoder_open_clip"
    ov_te = text_encoder.OVTextEncoder(entry, cache_compiled=False)
    assert ov_te.layers == 3
    for batch, seed in ((1, 1), (3, 2)):
        tokens = bigg_tokens(batch, seed)
        with torch.no_grad():
            want = tiny_bigg.encode_with_transformer(tokens)
            embeds = text_encoder.token_embedding(model)(tokens)
        hidden, pooled = ov_te.encode(embeds, skip=2, eot=tokens.argmax(dim=-1))
        assert hidden.shape == want["penultimate"].shape == (batch, 77, 64)
        assert torch.allclose(hidden, want["penultimate"], atol=1e-4), (
            (hidden - want["penultimate"]).abs().max()
        )
        assert pooled.shape == want["pooled"].shape == (batch, 24)
        assert torch.allclose(pooled, want["pooled"], atol=1e-4), (pooled - want["pooled"]).abs().max()
        last, _ = ov_te.encode(embeds, skip=1, eot=tokens.argmax(dim=-1))
        assert torch.allclose(last, want["last"], atol=1e-4)
    with pytest.raises(ValueError, match="end token"):
        ov_te.encode(embeds, skip=2)


def test_sd2_open_clip_layer_normed_penultimate_from_the_same_graph(tiny_bigg, tmp_path):
    """SD2's FrozenOpenCLIPEmbedder (ldm) reads ln_final of the penultimate block: the host
    applies ln_final (it stays with the host, 2 x width parameters) to the graph's layer."""
    ldm_modules = pytest.importorskip("ldm.modules.encoders.modules")
    from sd_ov.runtime import text_encoder

    sd2 = ldm_modules.FrozenOpenCLIPEmbedder.__new__(ldm_modules.FrozenOpenCLIPEmbedder)
    torch.nn.Module.__init__(sd2)
    sd2.model, sd2.layer, sd2.layer_idx = tiny_bigg.model, "penultimate", 1
    entry = text_encoder.prepare_text_encoder_entry(
        tiny_bigg.model, tmp_path, "tiny-sd2", "h", kind="open_clip"
    )
    ov_te = text_encoder.OVTextEncoder(entry, cache_compiled=False)
    tokens = bigg_tokens(2, 7)
    with torch.no_grad():
        want = sd2.encode_with_transformer(tokens)
        hidden, _ = ov_te.encode(
            text_encoder.token_embedding(sd2.model)(tokens), 1 + sd2.layer_idx, tokens.argmax(-1)
        )
        got = sd2.model.ln_final(hidden)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def test_an_sdxl_checkpoint_is_read_from_its_weights_alone(sdxl_unet, tmp_path):
    """Forge holds its own UNet class: the export builds sgm's from the file. The shipped SDXL
    config is picked from the weights' shapes (full size, on the meta device), a refiner is
    refused, and the file's UNet computes what the UNet written to it does."""
    from safetensors.torch import save_file

    from sd_ov.errors import UnsupportedModelError
    from sd_ov.graphs.ldm_unet import config_for_state_dict, load_config, load_unet_from_checkpoint

    with torch.device("meta"):
        full = openaimodel.UNetModel(**load_config("sdxl"))
        refiner = openaimodel.UNetModel(
            **{
                **load_config("sdxl"),
                "context_dim": 1280,
                "adm_in_channels": 2560,
                "model_channels": 384,
                "num_head_channels": 64,
                "transformer_depth": [0, 4, 4, 0],
                "channel_mult": [1, 2, 4, 4],
                "attention_resolutions": [4, 2],
            }
        )
    assert config_for_state_dict(full.state_dict()) == load_config("sdxl")
    with pytest.raises(UnsupportedModelError, match="SDXL refiner"):
        config_for_state_dict(refiner.state_dict())

    path = tmp_path / "sdxl.safetensors"
    save_file(
        {f"model.diffusion_model.{k}": v.half().contiguous() for k, v in sdxl_unet.state_dict().items()}, path
    )
    loaded = load_unet_from_checkpoint(path, TINY_SDXL)
    assert type(loaded) is openaimodel.UNetModel
    x, t, c, y = inputs(1, 16, 16)
    with torch.no_grad():
        expected = copy.deepcopy(sdxl_unet).half().float()(x, t, c, y)  # as the fp16 file holds them
        assert torch.allclose(loaded(x, t, c, y), expected, atol=1e-5)
