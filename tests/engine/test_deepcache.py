"""DeepCache: full and shallow models equal torch with a fresh cache; the schedule counts calls."""

from __future__ import annotations

import pytest
import torch

from sd_ov.errors import UnsupportedModelError
from sd_ov.graphs.control_inputs import control_input_names
from sd_ov.graphs.deepcache import (
    DeepCacheConfig,
    DeepCacheFull,
    DeepCacheShallow,
    DeepCacheUNet,
    full_call_indices,
)
from sd_ov.optimize import metrics
from sd_ov.optimize.sampling import sample_euler, sample_heun
from sd_ov.serve import engine
from sd_ov.store.recipe import Recipe

from ..conftest import unet_inputs
from .test_controlnet import controlled_forward, random_residuals

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def deepcache_entry(tiny_unet, tmp_path_factory):
    root = tmp_path_factory.mktemp("deepcache")
    return engine.prepare_entry(
        tiny_unet, root, "tiny", engine.weights_hash(tiny_unet), Recipe().with_deepcache(1)
    )


def test_torch_wrappers_equal_the_unet_for_every_branch(tiny_unet):
    x, t, c = unet_inputs(2, 32, 32, 77, 64)
    with torch.no_grad():
        ref = tiny_unet(x, t, c)
        for branch in range(len(tiny_unet.input_blocks) - 1):
            out, feature = DeepCacheFull(tiny_unet, branch)(x, t, c)
            assert torch.equal(out, ref)
            assert torch.equal(DeepCacheShallow(tiny_unet, branch)(x, t, c, feature), ref)
    with pytest.raises(UnsupportedModelError, match="out of range"):
        DeepCacheFull(tiny_unet, len(tiny_unet.input_blocks))


def test_openvino_full_and_shallow_equal_torch(deepcache_entry, tiny_unet):
    assert deepcache_entry.exported
    runner = engine.open_deepcache(deepcache_entry.entry, DeepCacheConfig(3, 1))
    for batch, size, tokens in [(2, 32, 77), (1, 48, 154)]:
        x, t, c = unet_inputs(batch, size, size, tokens, 64, seed=size)
        with torch.no_grad():
            ref = tiny_unet(x, t, c)
        out, feature = runner.full(x, t, c)
        assert metrics.rel_l2(out, ref) <= TOLERANCE
        assert metrics.rel_l2(runner.shallow(x, t, c, feature), ref) <= TOLERANCE
    manifest = deepcache_entry.entry.manifest
    assert manifest.recipe.deepcache_branch == 1 and manifest.feature_channels == 64
    sizes = {name: meta.size for name, meta in manifest.files.items()}
    assert sizes["unet_shallow.bin"] < sizes["unet_full.bin"] / 3  # the shallow part is small


def test_odd_sizes_in_the_full_and_the_shallow_model(stub_modules, deepcache_entry, tiny_unet):
    """A 41x25 latent: branch 1's cached feature leaves an upsample at 42x26, and the shallow
    model's first skip join must resize it as the webui's cat does (the stand-in installs it)."""
    runner = engine.open_deepcache(deepcache_entry.entry, DeepCacheConfig(3, 1))
    x, t, c = unet_inputs(2, 41, 25, 77, 64, seed=7)
    with torch.no_grad():
        ref = tiny_unet(x, t, c)
        ref_feature = DeepCacheFull(tiny_unet, 1)(x, t, c)[1]
    out, feature = runner.full(x, t, c)
    assert feature.shape[-2:] == (42, 26)  # upsampled, before the join resizes it
    assert metrics.rel_l2(out, ref) <= TOLERANCE and metrics.rel_l2(feature, ref_feature) <= TOLERANCE
    assert metrics.rel_l2(runner.shallow(x, t, c, feature), ref) <= TOLERANCE


@pytest.mark.parametrize("h,w", [(32, 32), (41, 25)])
def test_controlnets_residuals_reach_the_full_and_the_shallow_model(
    stub_modules, deepcache_entry, tiny_unet, h, w
):
    """Issue #24: the pair opened with ControlNet's inputs. The full model takes every residual;
    the shallow one those of input blocks 0..branch only (the cached feature holds the middle
    block's and the deep ones of the last full call). Full and shallow calls, each with the
    residuals of its own call, equal torch's ControlNet forward cached the same way, call by call
    (odd sides too: the shallow join resizes the cached feature)."""
    names = control_input_names(len(tiny_unet.input_blocks))
    runner = engine.open_deepcache(deepcache_entry.entry, DeepCacheConfig(3, 1), control=True)
    assert runner.full.control_inputs == names
    assert runner.shallow.control_inputs == names[:2]  # branch 1: input blocks 0 and 1, no middle
    runner.start(DeepCacheConfig(3, 1))
    x, t, c = unet_inputs(2, h, w, 77, 64, seed=11)
    feature = None
    for call in range(3):
        x, t = x * 0.9, t - 50  # a sampler's next call: the cached feature is one call old
        residuals = random_residuals(tiny_unet, 2, h, w, seed=20 + call)
        expected, cached = controlled_forward(tiny_unet, x, t, c, residuals, branch=1, feature=feature)
        feature = cached if feature is None else feature
        assert metrics.rel_l2(runner(x, t, c, control=residuals), expected) <= TOLERANCE
    assert runner.pattern == ["F", "S", "S"]
    no_control = [r * 0 for r in residuals]
    shallow_without, _ = controlled_forward(tiny_unet, x, t, c, no_control, branch=1, feature=feature)
    assert metrics.rel_l2(shallow_without, expected) > 0.05  # its own residuals count: the test can fail


class Recorder:
    """Stand-ins for the full and shallow models: torch UNet arithmetic, calls recorded."""

    def __init__(self, unet):
        self.full_model, self.shallow_model = DeepCacheFull(unet, 1), DeepCacheShallow(unet, 1)

    def full(self, x, t, c):
        with torch.no_grad():
            return self.full_model(x, t, c)

    def shallow(self, x, t, c, feature):
        assert (
            feature.shape[0] == x.shape[0] and feature.shape[2:] == x.shape[2:]
        )  # branch 1: full resolution
        with torch.no_grad():
            return self.shallow_model(x, t, c, feature)


def make_runner(tiny_unet, interval, schedule="uniform"):
    rec = Recorder(tiny_unet)
    return DeepCacheUNet(rec.full, rec.shallow, DeepCacheConfig(interval, 1, schedule))


def sampling_inputs(size=32, tokens=77):
    gen = torch.Generator().manual_seed(5)
    cond, uncond = torch.randn(1, tokens, 64, generator=gen), torch.randn(1, tokens, 64, generator=gen)
    return torch.randn(1, 4, size, size, generator=gen), cond, uncond


def test_one_call_sampler_pattern(tiny_unet):
    runner = make_runner(tiny_unet, 3)
    noise, cond, uncond = sampling_inputs()
    sample_euler(runner, noise, cond, uncond, steps=7)
    assert "".join(runner.pattern) == "FSSFSSF"


def test_two_call_sampler_is_driven_by_the_count_not_the_step(tiny_unet):
    runner = make_runner(tiny_unet, 3)
    noise, cond, uncond = sampling_inputs()
    sample_heun(runner, noise, cond, uncond, steps=4)  # 2+2+2+1 calls
    assert "".join(runner.pattern) == "FSSFSSF"


def test_interval_one_is_off_and_equals_no_caching(tiny_unet):
    noise, cond, uncond = sampling_inputs()
    runner = make_runner(tiny_unet, 1)
    cached = sample_euler(runner, noise, cond, uncond, steps=3).latent
    with torch.no_grad():
        plain = sample_euler(lambda x, t, c: tiny_unet(x, t, c), noise, cond, uncond, steps=3).latent
    assert "".join(runner.pattern) == "FFF" and torch.equal(cached, plain)


def test_separate_cond_and_uncond_calls_keep_separate_caches(tiny_unet):
    """Prompts of different lengths: the webui calls cond (154 tokens) and uncond (77) apart."""
    runner = make_runner(tiny_unet, 2)
    x = torch.randn(1, 4, 32, 32)
    cond, uncond = torch.randn(1, 154, 64), torch.randn(1, 77, 64)
    for _ in range(3):
        for context in (cond, uncond):
            runner(x, torch.tensor([500.0]), context)
    assert "".join(runner.pattern) == "FFSSFF"
    assert len(runner.state.slots) == 2


def test_a_new_job_a_new_shape_or_a_new_prompt_forces_a_full_call(tiny_unet):
    runner = make_runner(tiny_unet, 4)
    t = torch.tensor([500.0])
    x, c = torch.randn(1, 4, 32, 32), torch.randn(1, 77, 64)
    runner(x, t, c)
    runner(x, t, c)
    runner(x, t, c + 1)  # prompt editing switched the prompt mid-job
    runner(torch.randn(1, 4, 48, 48), t, c)  # hires pass at another size
    runner.start(runner.state.config)  # the next job
    runner(x, t, c)
    assert "".join(runner.pattern) == "F"
    assert runner.state.full_calls == 4 and runner.state.shallow_calls == 1


def test_non_uniform_schedule_spends_its_full_calls_early():
    uniform = full_call_indices(DeepCacheConfig(3, 0, "uniform"), 20)
    early = full_call_indices(DeepCacheConfig(3, 0, "non-uniform"), 20)
    assert 0 in early and len(early) == len(uniform) == 7
    assert sum(1 for i in early if i < 10) > sum(1 for i in uniform if i < 10)


def test_labels_differ_per_interval_while_the_ir_is_shared(deepcache_entry, tiny_unet, monkeypatch):
    labels = {DeepCacheConfig(i, 1).label() for i in (2, 3, 5)} | {
        DeepCacheConfig(3, 1, "non-uniform").label()
    }
    assert len(labels) == 4
    assert DeepCacheConfig.from_infotext(DeepCacheConfig(5, 2, "non-uniform").infotext()) == DeepCacheConfig(
        5, 2, "non-uniform"
    )
    # Changing interval or schedule never re-exports: the IR depends on the branch only.
    monkeypatch.setattr(engine, "export_deepcache", lambda *a, **k: pytest.fail("re-exported"))
    root = deepcache_entry.entry.path.parents[1]
    again = engine.prepare_entry(
        tiny_unet, root, "tiny", engine.weights_hash(tiny_unet), Recipe().with_deepcache(1)
    )
    assert again.entry.path == deepcache_entry.entry.path
    assert Recipe().with_deepcache(0).key() != Recipe().with_deepcache(1).key()


def test_a_lora_serves_through_the_full_and_the_shallow_model(deepcache_entry, tiny_unet):
    """Issue #10: with the LoRA branch, DeepCache's full model takes the whole LoRA set and the
    shallow one the layers it holds; both equal torch with the LoRA merged."""
    from .test_lora_branch import make_lora, merged

    lora = make_lora(tiny_unet, seed=7)
    shallow_only = "output_blocks.5.1.transformer_blocks.0.attn1.to_v"  # a layer of the outer blocks
    lora.update(make_lora(tiny_unet, layers=(shallow_only,), seed=8))
    runner = engine.open_deepcache(deepcache_entry.entry, DeepCacheConfig(3, 1), lora=True)
    runner.full.set_lora(lora)
    runner.shallow.set_lora(lora, every_layer=False)
    assert runner.shallow.lora_layers < runner.full.lora_layers == len(lora)
    x, t, c = unet_inputs(2, 32, 32, 77, 64, seed=9)
    with torch.no_grad():
        ref = merged(tiny_unet, lora)(x, t, c)
    out, feature = runner.full(x, t, c)
    assert metrics.rel_l2(out, ref) <= TOLERANCE
    assert metrics.rel_l2(runner.shallow(x, t, c, feature), ref) <= TOLERANCE
    assert metrics.rel_l2(tiny_unet(x, t, c).detach(), ref) > 0.05


def test_the_pairs_disk_check_counts_the_shallow_models_own_weights(deepcache_entry, tiny_unet):
    """The plain pair writes the full UNet and a shallow model of a few blocks: the space it asks
    for is one UNet plus those blocks' weights (SDXL: 10.3 GB, not 21 GB that a 2x estimate asked
    for and a laptop's disk refused), and that is what its shallow IR holds."""
    from sd_ov.graphs.deepcache import shallow_parameters

    shallow = shallow_parameters(tiny_unet, 1)
    total = sum(p.numel() for p in tiny_unet.parameters())
    assert 0 < shallow < total
    assert shallow_parameters(tiny_unet, 0) < shallow  # a deeper branch keeps more blocks
    written = (deepcache_entry.entry.path / "unet_shallow.bin").stat().st_size
    assert 0.8 * shallow * 4 <= written <= 1.1 * shallow * 4 + 2**16, (written, shallow * 4)
