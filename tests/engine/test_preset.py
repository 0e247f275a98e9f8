"""The CPU's measured bf16 verdict, where bf16 is used, and the fastest preset's form (issue #12)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sd_ov.optimize.form import parse_optimize_form
from sd_ov.runtime import cpu_caps as cpu_caps_module
from sd_ov.runtime.cpu_caps import MIN_BF16_SPEEDUP, CpuCaps, cpu_caps
from sd_ov.runtime.settings import RuntimeSettings
from sd_ov.serve.preset import FASTEST, preset_precision

SLOW_BF16 = CpuCaps(("BF16", "FP32", "INT8"), 0.35)  # claimed, 3x slower: the AMX VM of 2026-11
FAST_BF16 = CpuCaps(("BF16", "FP32", "INT8"), 1.8)
NO_BF16 = CpuCaps(("FP32", "INT8"), 0.0)


def test_this_cpus_verdict_is_measured_only_where_bf16_is_claimed_and_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    caps = cpu_caps()
    assert "FP32" in caps.claimed
    if "BF16" in caps.claimed:
        assert caps.bf16_speedup > 0, "the timing child ran"
    else:
        assert caps.bf16_speedup == 0 and not caps.bf16_native
    assert caps.bf16_native == ("BF16" in caps.claimed and caps.bf16_speedup >= MIN_BF16_SPEEDUP)
    assert (tmp_path / "sd_ov" / "cpu_caps.json").exists()
    assert cpu_caps() == caps  # from the file: the same verdict, no second measurement


@pytest.mark.parametrize("caps, runs", [(SLOW_BF16, "f32"), (FAST_BF16, "bf16"), (NO_BF16, "f32")])
def test_bf16_runs_only_where_this_cpu_runs_it_faster(monkeypatch, caps, runs):
    monkeypatch.setattr(cpu_caps_module, "cpu_caps", lambda: caps)
    monkeypatch.setattr("sd_ov.runtime.settings.cpu_caps", lambda: caps)
    settings = RuntimeSettings(precision="bf16").for_device()
    assert settings.precision == runs
    assert bool(settings.precision_note) == (runs == "f32")
    if caps is SLOW_BF16:
        assert settings.precision_note == (
            "bf16 asked, f32 ran: this CPU does not run bf16 faster than f32 (bf16 ran 0.35x f32's speed)"
        )
    assert preset_precision("CPU") == runs
    assert RuntimeSettings(device="GPU", precision="bf16").for_device().precision == "bf16"  # not the CPU's


def test_the_fastest_preset_sets_the_recipe_and_its_deepcache_pair(monkeypatch):
    monkeypatch.setattr(cpu_caps_module, "cpu_caps", lambda: NO_BF16)
    request = parse_optimize_form({"preset": "fastest", "int8": "off", "tome": 0.2, "samples": 4})
    assert request.recipe == replace(FASTEST.recipe, samples=4)  # the preset's fields win over the form's
    assert request.deepcache_branch == FASTEST.deepcache.branch and request.preset == "fastest"
    monkeypatch.setattr(cpu_caps_module, "cpu_caps", lambda: FAST_BF16)
    assert parse_optimize_form({"preset": "fastest"}).recipe.precision == "bf16"
    with pytest.raises(ValueError, match="preset must be"):
        parse_optimize_form({"preset": "turbo"})
    default = parse_optimize_form({})
    assert default.preset == "" and default.deepcache_branch == 0  # a DeepCache pair by default
    assert parse_optimize_form({"deepcache_branch": "off"}).deepcache_branch is None


def test_the_fastest_preset_for_sdxl_keeps_int8_and_deepcache_without_token_merging(monkeypatch):
    """SDXL's UNet takes no token merging (Optimize refuses it): the preset's SDXL recipe is the
    rest of it, so choosing the preset on an SDXL checkpoint makes a recipe instead of an error."""
    monkeypatch.setattr(cpu_caps_module, "cpu_caps", lambda: FAST_BF16)
    request = parse_optimize_form({"preset": "fastest", "tome": 0.5}, sdxl=True)
    assert request.recipe.int8 == FASTEST.sdxl_recipe.int8 and request.recipe.tome == 0
    assert request.recipe.precision == "bf16" and request.deepcache_branch == FASTEST.deepcache.branch
    assert parse_optimize_form({"preset": "fastest"}).recipe.tome == FASTEST.recipe.tome  # SD1/SD2
    assert parse_optimize_form({"tome": 0.3}, sdxl=True).recipe.tome == 0.3  # no preset: the form's own


def test_the_presets_time_comes_from_the_nearest_sized_run_here_or_this_machines_export():
    """The accordion's "about N here": a preset run in the cache (its recipe, pair and INT8 VAE
    decoder seconds) scaled per weight from the checkpoint of the nearest size (an SDXL run says
    nothing of SD1.5's seconds per weight); before any, 45x this machine's FP32 export."""
    from types import SimpleNamespace

    from sd_ov.optimize.estimate import PRESET_OVER_FP32_EXPORT, preset_seconds
    from sd_ov.store.recipe import Recipe

    def entry(name, recipe, seconds, weights=None, preset="fastest", component="unet", timings=None):
        return SimpleNamespace(
            manifest=SimpleNamespace(
                checkpoint_name=name if component == "unet" else f"{name}-vae-baked",
                checkpoint_hash=f"{name}-hash",
                recipe=recipe,
                component=component,
                unet=SimpleNamespace(parameters=weights) if component == "unet" else None,
                preset=preset,
                report=SimpleNamespace(optimize_s=seconds),
                timings=timings or {},
            )
        )

    sd15, sdxl = 860_000_000, 2_570_000_000
    fp32 = entry("sd15", Recipe(), None, sd15, preset="", timings={"convert_s": 6.7, "save_s": 8.2})
    assert preset_seconds([fp32], sd15) == pytest.approx(14.9 * PRESET_OVER_FP32_EXPORT)
    runs = [
        fp32,
        entry("sd15", Recipe(int8="hybrid-ff", tome=0.5), 344.0, sd15),
        entry("sd15", Recipe(int8="hybrid-ff", tome=0.5).with_deepcache(0), 275.0, sd15),
        entry("sd15", Recipe(int8="full"), 44.0, component="vae"),
        entry("sdxl", Recipe(int8="hybrid"), 600.0, sdxl),
        entry("sdxl", Recipe(int8="hybrid").with_deepcache(0), 500.0, sdxl),
    ]
    assert preset_seconds(runs, sd15 * 1.1) == pytest.approx(663.0 * 1.1)  # SD1.5's run, all three parts
    assert preset_seconds(runs, sdxl) == pytest.approx(1100.0)
    assert preset_seconds([fp32], sd15, preset="another") == pytest.approx(preset_seconds([fp32], sd15))
