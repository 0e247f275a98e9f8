"""Token merging and pruning on the real ldm UNet: in torch, and exported to OpenVINO."""

from __future__ import annotations

import pytest
import torch

from sd_ov.graphs.export import convert_unet
from sd_ov.graphs.ldm_unet import describe
from sd_ov.graphs.prune import feed_forwards, ffn_activity, neurons_to_keep, pruned_ffn
from sd_ov.graphs.tome import bipartite_soft_matching, token_merging
from sd_ov.graphs.traceable_unet import traceable
from sd_ov.optimize import metrics
from sd_ov.runtime.ov_core import get_core

from ..conftest import unet_inputs

# Stated tolerances (relative L2 against the plain torch UNet, random weights):
TOME_HALF_TOLERANCE = 0.1  # ratio 0.5 (measured 0.03 on the tiny UNet, as tomesd reports)
EXACT = 1e-5  # float reordering only


def torch_out(unet, inputs, ratio=None):
    with torch.no_grad(), traceable(unet):
        if ratio is None:
            return unet(*inputs)
        with token_merging(unet, ratio):
            return unet(*inputs)


def test_merge_then_unmerge_restores_kept_tokens_and_merges_the_asked_number():
    gen = torch.Generator().manual_seed(0)
    h, w = 6, 8
    x = torch.randn(2, h * w, 16, generator=gen)
    merge, unmerge = bipartite_soft_matching(x, h, w, 0.5)
    merged = merge(x)
    assert merged.shape == (2, h * w - int(h * w * 0.5), 16)
    restored = unmerge(merged)
    assert restored.shape == x.shape
    # the 36 - 24 = 12 sources that were not merged come back exactly; merged ones get the mean
    # of their destination, so the picture is not simply copied through
    same = (restored == x).all(-1)
    assert (same.sum(-1) >= 12).all() and not same.all()
    merge0, unmerge0 = bipartite_soft_matching(x, h, w, 0.0)
    assert merge0(x).shape == x.shape
    assert torch.equal(unmerge0(merge0(x)), x)


def test_tome_ratio_zero_equals_the_plain_unet_and_half_stays_close(tiny_unet):
    inputs = unet_inputs(2, 16, 24, 77, 64, seed=5)
    plain = torch_out(tiny_unet, inputs)
    assert metrics.rel_l2(torch_out(tiny_unet, inputs, 0.0), plain) < EXACT
    half = torch_out(tiny_unet, inputs, 0.5)
    assert 0 < metrics.rel_l2(half, plain) <= TOME_HALF_TOLERANCE
    assert metrics.rel_l2(torch_out(tiny_unet, inputs), plain) == 0  # patch removed afterwards


def test_tome_really_shortens_the_top_level_self_attention(tiny_unet):
    seen = []
    attn = next(
        m for n, m in tiny_unet.named_modules() if n.endswith("input_blocks.1.1.transformer_blocks.0.attn1")
    )
    hook = attn.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    try:
        torch_out(tiny_unet, unet_inputs(2, 16, 24, 77, 64), 0.5)
        torch_out(tiny_unet, unet_inputs(2, 16, 24, 77, 64))
    finally:
        hook.remove()
    assert seen == [16 * 24 // 2, 16 * 24]


def test_tome_exports_to_one_dynamic_ir_that_matches_torch_at_several_sizes(tiny_unet):
    with token_merging(tiny_unet, 0.5):
        model = convert_unet(tiny_unet, describe(tiny_unet))
    compiled = get_core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for h, w in [(16, 24), (32, 32)]:
        inputs = unet_inputs(2, h, w, 77, 64, seed=h)
        out = compiled(dict(zip(["x", "timesteps", "context"], [t.numpy() for t in inputs], strict=True)))[0]
        assert metrics.rel_l2(torch.from_numpy(out), torch_out(tiny_unet, inputs, 0.5)) < 1e-4


def test_tome_refuses_ratios_out_of_range(tiny_unet):
    with pytest.raises(ValueError, match="between 0 and 0.75"), token_merging(tiny_unet, 0.9):
        pass


def test_ffn_pruning_shrinks_the_linear_layers_and_puts_them_back(tiny_unet):
    samples = [
        {
            k: v.numpy()
            for k, v in zip(
                ("x", "timesteps", "context"), unet_inputs(2, 16, 16, 77, 64, seed=s), strict=True
            )
        }
        for s in range(2)
    ]
    activity = ffn_activity(tiny_unet, samples)
    ffs = feed_forwards(tiny_unet)
    assert set(activity) == set(ffs) and all((a >= 0).all() for a in activity.values())
    keep = neurons_to_keep(activity, 0.5)
    name, ff = next(iter(ffs.items()))
    inner = ff.net[2].in_features
    original = (ff.net[0].proj, ff.net[2])
    inputs = unet_inputs(2, 16, 16, 77, 64, seed=9)
    plain = torch_out(tiny_unet, inputs)
    with pruned_ffn(tiny_unet, keep):
        assert ff.net[2].in_features == len(keep[name]) < inner
        assert ff.net[0].proj.out_features == 2 * len(keep[name])
        pruned = torch_out(tiny_unet, inputs)
    assert (ff.net[0].proj, ff.net[2]) == original
    assert 0 < metrics.rel_l2(pruned, plain) < 0.5
    # keeping every neuron is exact: the value/gate split of GEGLU is kept aligned
    with pruned_ffn(tiny_unet, neurons_to_keep(activity, 0.0)):
        assert metrics.rel_l2(torch_out(tiny_unet, inputs), plain) < EXACT
