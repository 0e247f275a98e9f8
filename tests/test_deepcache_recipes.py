"""DeepCache on a compressed recipe (issue #12): Optimize makes the recipe's full and shallow
models; each equals its own recipe's single model when the cache is fresh."""

from __future__ import annotations

import pytest
import torch

from sd_ov import engine, metrics
from sd_ov.deepcache import DeepCacheConfig
from sd_ov.optimize import Measure, optimize
from sd_ov.recipe import Recipe

from .conftest import unet_inputs
from .test_compress import calibration  # noqa: F401  (the module-scoped sampler capture)

BRANCH = 1
# rel L2 of the full model's output against the recipe's single model. Same graph and the same
# samples, so NNCF places and sizes the same quantizers: measured ~1e-6.
SAME_RECIPE = 1e-3


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("deepcache-recipes")


def _optimize(unet, root, recipe, samples, measure=None):
    return optimize(unet, root, "tiny", "f" * 64, recipe, lambda _u, _p: samples, measure=measure)


def test_a_recipes_deepcache_pair_equals_the_recipe_with_a_fresh_cache(tiny_unet, root, calibration):  # noqa: F811
    """INT8 hybrid and ToMe in one recipe (one Optimize each for the recipe and its pair): each
    would break the equality on its own (ToMe's grid taken from the UNet's forward, which
    DeepCache's graphs never call; a quantizer the full graph has and the single one lacks)."""
    recipe = Recipe(int8="hybrid", tome=0.5, samples=4)
    single = _optimize(tiny_unet, root, recipe, calibration)
    pair = _optimize(tiny_unet, root, recipe.with_deepcache(BRANCH), calibration, Measure(128, 128, calls=1))
    manifest = pair.manifest
    assert manifest.recipe == recipe.with_deepcache(BRANCH) and set(manifest.models) == {"full", "shallow"}
    for model in ("full", "shallow"):  # both graphs carry the recipe's INT8 and its token merging
        text = pair.ir_path(model).read_text()
        assert "FakeQuantize" in text and "ScatterElementsUpdate" in text, model
    assert manifest.calibration["samples"] == 4
    assert manifest.report.shallow_s_per_step > 0 and manifest.report.shallow_rel_l2 <= 1e-5

    x, t, c = unet_inputs(2, 16, 16, 77, 64, seed=8)
    expected = engine.open_unet(single)(x, t, c)
    runner = engine.open_deepcache(pair, DeepCacheConfig(2, BRANCH))
    runner.start(DeepCacheConfig(2, BRANCH))
    full = runner(x, t, c)
    shallow = runner(x, t, c)  # the cache is fresh: same inputs, the feature just computed
    assert runner.pattern == ["F", "S"]
    assert metrics.rel_l2(full, expected) <= SAME_RECIPE
    assert metrics.rel_l2(shallow, expected) <= SAME_RECIPE
    with torch.no_grad():
        torch_out = tiny_unet(x, t, c)
    assert metrics.rel_l2(full, torch_out) > 1e-4, "the recipe must change the output"
