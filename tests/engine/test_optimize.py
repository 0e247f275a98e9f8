"""Optimize end to end on a tiny ldm UNet with real OpenVINO and NNCF: recipes, calibration,
the report, separate cache entries per recipe, and cancelling that leaves nothing behind."""

from __future__ import annotations

import pytest
import torch

from sd_ov.errors import Cancelled, ExportError
from sd_ov.graphs.ldm_unet import describe
from sd_ov.optimize.calibration import default_prompts, random_prompt_capture
from sd_ov.optimize.run import Measure, optimize, recipe_entries
from sd_ov.serve import engine
from sd_ov.store import cache
from sd_ov.store.recipe import Recipe

# Stated tolerance: INT8 hybrid + ToMe 0.5 + 25 % FFN pruning against torch FP32 (measured ~0.1).
COMBINED_TOLERANCE = 0.25
SMALL = Measure(128, 128, calls=1)


def test_recipe_labels_keys_and_validation():
    assert Recipe().key() == {"name": "fp32", "weights": "fp32"} and Recipe().label() == "FP32"
    combo = Recipe(int8="hybrid", tome=0.5, prune="ffn", prune_ratio=0.2, samples=8)
    assert combo.label() == "INT8 ToMe0.5 FFN20%"
    assert Recipe(int8="weights", precision="bf16").label() == "BF16 INT8w"
    assert combo.key() == Recipe(int8="hybrid", tome=0.5, prune="ffn", prune_ratio=0.2, samples=32).key()
    assert combo.key() != Recipe(int8="hybrid", tome=0.3, prune="ffn", prune_ratio=0.2).key()
    assert Recipe.from_key(combo.key()).key() == combo.key()
    assert combo.needs_calibration and not Recipe(int8="weights").needs_calibration
    for bad in (dict(int8="int4"), dict(tome=0.8), dict(prune="ffn"), dict(precision="f8")):
        with pytest.raises(ValueError):
            Recipe(**bad)


def test_default_prompts_ship_with_the_package():
    prompts = default_prompts()
    assert len(prompts) >= 16 and len(set(prompts)) == len(prompts)


@pytest.fixture(scope="module")
def capture(tiny_unet):
    return random_prompt_capture(describe(tiny_unet), prompts=2, steps=4, size=(128, 128))


def test_capture_runs_the_sampler_and_yields_the_unet_inputs(tiny_unet, tiny_entry, capture):
    runtime = engine.open_unet(tiny_entry)
    samples = capture(runtime)
    assert len(samples) == 8  # 2 pictures x 4 steps, one batched cond+uncond call per step
    assert samples[0]["x"].shape == (2, 4, 16, 16) and samples[0]["context"].shape == (2, 77, 64)
    assert runtime.stats.calls == 8  # the OpenVINO UNet served the capture


def test_optimize_makes_a_measured_entry_per_recipe(micro_tome_unet, tmp_path):
    unet = micro_tome_unet
    capture = random_prompt_capture(describe(unet), prompts=2, steps=4, size=(128, 128))
    combo = Recipe(int8="hybrid", tome=0.5, prune="ffn", prune_ratio=0.25, samples=6)
    steps = []
    entry = optimize(
        unet,
        tmp_path,
        "tiny",
        "a" * 64,
        combo,
        capture,
        shapes=[(2, 16, 16, 77)],
        measure=SMALL,
        sample_image=lambda served: _preview(served, unet),
        progress=lambda m, f: steps.append((m, f)),
    )
    manifest = entry.manifest
    assert manifest.label == combo.label() == "INT8 ToMe0.5 FFN25%"
    assert manifest.calibration["samples"] == 6
    assert manifest.unet.size_multiple == 2  # ToMe's 2x2 windows: even latent sides
    report = manifest.report
    for field in ("torch_s_per_step", "s_per_step", "speedup", "rel_l2", "psnr_db", "ssim", "peak_rss_mib"):
        assert getattr(report, field) > 0, field
    assert report.rel_l2 <= COMBINED_TOLERANCE
    # Optimize's own peak (sampled while it ran), at or above where it began, in a phase it named
    assert report.peak_rss_mib >= report.start_rss_mib > 0
    assert report.peak_phase in [m for m, _ in steps] + ["start"]
    messages = " | ".join(m for m, _ in steps)
    for stage in ("calibration picture", "FFN neuron activity", "compressing to INT8", "timing torch"):
        assert stage in messages
    assert steps[-1][1] == 1.0
    # the IR really is INT8 and pruned: FakeQuantize nodes, no FP32 graph copy left behind
    assert not (entry.path / "graph").exists()
    model = engine.open_unet(entry).model
    assert any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
    # compiled ahead: the blob of the asked shape is on disk
    assert any(entry.blob_dir.iterdir())

    # a second recipe is a second entry; the plain FP32 entry made on the way is a third
    weights = optimize(unet, tmp_path, "tiny", "a" * 64, Recipe(int8="weights"), measure=None)
    paths = {e.path for e in recipe_entries(tmp_path)}
    assert {entry.path, weights.path} <= paths and len(paths) == 3


def _preview(unet, torch_unet):
    """The report's sample picture: a short Euler run from a fixed seed, cheap preview decode."""
    from sd_ov.optimize.sampling import latent_to_image, sample_euler

    gen = torch.Generator().manual_seed(1)
    width = describe(torch_unet).context_dim
    cond, uncond = torch.randn(1, 77, width, generator=gen), torch.randn(1, 77, width, generator=gen)
    noise = torch.randn(1, 4, 16, 16, generator=gen)
    latent = sample_euler(lambda x, t, c: unet(x, t, c), noise, cond, uncond, steps=3).latent
    return latent_to_image(latent[0])


@pytest.mark.parametrize("stage", ["compressing to INT8", "timing the OpenVINO UNet"])
def test_cancelling_optimize_leaves_no_entry(micro_unet, tmp_path, stage):
    engine.prepare_entry(micro_unet, tmp_path, "micro", "b" * 64)  # the plain entry exists already
    before = {e.path for e in cache.list_entries(tmp_path)}
    capture = random_prompt_capture(describe(micro_unet), prompts=1, steps=4, size=(64, 64))

    def progress(message, fraction):
        if message.startswith(stage):
            raise Cancelled("user pressed Cancel")

    with pytest.raises(Cancelled):
        optimize(
            micro_unet,
            tmp_path,
            "micro",
            "b" * 64,
            Recipe(int8="hybrid", samples=4),
            capture,
            measure=Measure(64, 64, calls=1),
            progress=progress,
        )
    assert {e.path for e in cache.list_entries(tmp_path)} == before
    leftovers = [p.name for p in tmp_path.glob("*/*") if p.is_dir() and p not in before]
    assert leftovers == []


def test_a_calibrated_recipe_without_a_capture_is_refused(tiny_unet, tmp_path):
    with pytest.raises(ValueError, match="needs calibration"):
        optimize(tiny_unet, tmp_path, "tiny", "c" * 64, Recipe(int8="hybrid"), None, measure=None)


def test_optimize_frees_the_torch_unet_while_calibration_and_nncf_run(tmp_path):
    """With the torch UNet's weights handed over, they are gone while the FP32 OpenVINO UNet
    calibrates and NNCF compresses, back (bit-exactly) for the ToMe export and the measurement,
    and in memory when Optimize returns."""
    from sd_ov.graphs.ldm_unet import build_unet
    from sd_ov.runtime.torch_weights import ModuleWeights, is_released

    from ..conftest import MICRO
    from .test_torch_weights import loaded_like_the_webui, write_checkpoint

    source = write_checkpoint(build_unet(MICRO, seed=0), tmp_path / "model.safetensors")
    unet = loaded_like_the_webui(MICRO, source)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    weights = ModuleWeights(unet, source)
    seen = []
    inner = random_prompt_capture(describe(unet), prompts=1, steps=2, size=(64, 64))

    def capture(runtime, progress=lambda m, f: None):
        seen.append(("calibration", is_released(unet)))
        return inner(runtime, progress)

    def progress(message, fraction):
        if message.startswith(("compressing to INT8", "tracing", "timing torch")):
            seen.append((message.split(" ")[0], is_released(unet)))

    recipe = Recipe(int8="hybrid", tome=0.5, samples=2)
    optimize(
        unet, tmp_path / "cache", "m", "b" * 64, recipe, capture,
        measure=SMALL, progress=progress, torch_weights=weights,
    )  # fmt: skip
    assert seen == [
        ("tracing", False),  # the FP32 export
        ("calibration", True),
        ("tracing", False),  # the ToMe export
        ("compressing", True),
        ("timing", False),
    ]
    assert not is_released(unet) and weights.resident
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())


def test_optimize_writes_no_compiled_blob_when_the_setting_keeps_none(micro_unet, tmp_path):
    """Settings → "Keep compiled blobs on disk" off: the measurement leaves no blob; on, it does,
    and the entry's disk figure counts them beside the IR. Calibration never writes one into the
    FP32 entry (SDXL's FP32 blob alone is 10 GB): it samples with a temporary INT8-weights copy."""
    from sd_ov.optimize.report import disk_text, entry_text

    capture = random_prompt_capture(describe(micro_unet), prompts=1, steps=2, size=(64, 64))
    recipe = Recipe(int8="hybrid", samples=2)
    small = Measure(64, 64, calls=1)
    entry = optimize(  # off: a recipe without calibration is enough (one NNCF quantize less)
        micro_unet,
        tmp_path,
        "tiny",
        "d" * 64,
        Recipe(int8="weights"),
        None,
        shapes=[(2, 8, 8, 77)],
        measure=small,
        cache_compiled=False,
    )
    fp32 = cache.find(tmp_path, cache.EntryKey("tiny", "d" * 64))[0]
    for made in (entry, fp32):
        assert cache.compiled_bytes(made) == 0, made.path
    assert " + " not in disk_text(entry)
    entry = optimize(
        micro_unet, tmp_path, "tiny", "d" * 64, recipe, capture, shapes=[(2, 8, 8, 77)], measure=small
    )
    blobs = cache.compiled_bytes(entry)
    assert blobs > 0 and cache.compiled_bytes(fp32) == 0
    assert disk_text(entry) == f"{entry.manifest.disk_bytes / 2**20:.0f} + {blobs / 2**20:.0f}"
    assert disk_text(entry) in entry_text(entry)
    assert cache.total_bytes(tmp_path) >= entry.manifest.disk_bytes + blobs
    assert cache.drop_compiled(entry) == [] and cache.compiled_bytes(entry) == 0
    assert cache.validate(entry.path).manifest.label == entry.manifest.label  # still a valid entry


def test_the_fp32_entries_exported_only_for_optimize_go_unless_they_were_there(
    micro_unet, tmp_path, monkeypatch
):
    """keep_fp32=False (the tab, the API and the CLI): an INT8 recipe with its DeepCache pair leaves
    its two entries, not the FP32 IR and plain pair it was compressed from (SDXL: 10 GB each);
    an FP32 entry the user had served before Optimize stays.

    Calibration samples with the FP32 IR at INT8 weights (a quarter of the FP32 model's memory:
    SDXL's calibration was Optimize's peak in the webui; test-sized UNets sample at FP32 unless
    told, as here), made in a temporary folder gone when Optimize returns; the pair reuses the
    samples and makes no second one. A pair that cannot be made (a full disk) leaves the recipe
    made before it, and says why."""
    import openvino as ov

    from sd_ov.graphs import deepcache
    from sd_ov.optimize import calibration_unet
    from sd_ov.optimize.pair import optimize_with_deepcache

    monkeypatch.setattr(calibration_unet, "INT8_FROM_BYTES", 0)
    inner = random_prompt_capture(describe(micro_unet), prompts=1, steps=2, size=(64, 64))
    seen = []

    def capture(runtime, progress):
        samples = inner(runtime, progress)
        model = ov.Core().read_model(str(runtime.folder / "unet.xml"))
        types = {
            op.get_element_type().get_type_name()
            for op in model.get_ops()
            if op.get_type_name() == "Constant"
        }
        seen.append((runtime.folder, types))
        return samples

    messages = []
    key = "e" * 64
    made = optimize_with_deepcache(
        micro_unet,
        tmp_path,
        "tiny",
        key,
        Recipe(int8="hybrid", samples=2),
        capture,
        deepcache_branch=0,
        measure=None,
        keep_fp32=False,
        progress=lambda m, f: messages.append(m),
    )
    on_disk = {e.path for e in cache.list_entries(tmp_path)}
    assert on_disk == {e.path for e in made} and len(made) == 2
    assert cache.find(tmp_path, cache.EntryKey("tiny", key))[0] is None
    assert len(seen) == 1 and messages.count("calibration model: the FP32 IR with INT8 weights") == 1
    folder, types = seen[0]
    assert {"i8", "u8"} & types, types  # NNCF's INT8 weights
    assert not folder.exists() and not [p for p in folder.parent.iterdir() if cache.TMP_MARK in p.name]

    plain = engine.prepare_entry(micro_unet, tmp_path, "tiny", key).entry  # the user serves FP32

    def disk_full(folder, needed_bytes):
        raise ExportError(f"not enough disk space in {folder}")

    # the pair (on by default) cannot be exported: the recipe made before it stays, and says why
    monkeypatch.setattr(deepcache, "check_disk_space", disk_full)
    why = []
    made = optimize_with_deepcache(
        micro_unet,
        tmp_path,
        "tiny",
        key,
        Recipe(int8="weights"),
        capture,
        deepcache_branch=0,
        measure=None,
        keep_fp32=False,
        pair_failed=why.append,
    )
    assert [e.manifest.recipe for e in made] == [Recipe(int8="weights")] and "disk space" in str(why[0])
    pair_key = cache.EntryKey("tiny", key, Recipe(int8="weights").with_deepcache(0))
    assert cache.find(tmp_path, pair_key)[0] is None
    assert not [p for p in tmp_path.rglob("*") if cache.TMP_MARK in p.name]
    assert cache.find(tmp_path, cache.EntryKey("tiny", key))[0].path == plain.path
    with pytest.raises(ExportError, match="disk space"):  # without `pair_failed`, the run says so
        weights = Recipe(int8="weights")
        optimize_with_deepcache(
            micro_unet, tmp_path, "tiny", key, weights, capture, deepcache_branch=0, measure=None
        )


def test_a_run_without_room_for_its_recipe_and_pair_is_refused_before_it_starts(
    micro_unet, tmp_path, monkeypatch
):
    """The room of the whole run (FP32 IR, INT8 recipe, then the FP32 pair and its INT8 pair, as the
    run makes and deletes them) is asked before any work, and the answer says how much: with room
    for the FP32 export only, nothing is written."""
    from collections import namedtuple

    from sd_ov.graphs import export
    from sd_ov.optimize.pair import check_room, optimize_with_deepcache

    usage = namedtuple("usage", "total used free")
    free = 4 * describe(micro_unet).parameters
    monkeypatch.setattr(export.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - free, free))
    with pytest.raises(
        ExportError, match=r"the INT8 recipe and its DeepCache pair \(at the run's peak\) needs"
    ):
        optimize_with_deepcache(
            micro_unet,
            tmp_path,
            "tiny",
            "c" * 64,
            Recipe(int8="weights"),
            None,
            deepcache_branch=0,
            measure=None,
        )
    assert cache.list_entries(tmp_path) == [] and not list(tmp_path.rglob("*.bin"))
    check_room(tmp_path, micro_unet, None, fp32_there=True, pair_there=False)  # the recipe alone fits
