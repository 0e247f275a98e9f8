"""The cache: reuse without converting, detect damage and rebuild, never leave a half entry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import namedtuple

import pytest

from sd_ov.errors import Cancelled, ExportError
from sd_ov.graphs import export
from sd_ov.serve import engine
from sd_ov.store import cache
from sd_ov.store.recipe import Recipe

from .. import windows_fs


@pytest.fixture(params=["posix", "windows"])
def file_rules(request, monkeypatch):
    """A test that uses it runs twice: with this system's rules and with Windows' (emulated: no
    delete or move of a file in use, no rename over a folder)."""
    if request.param == "windows":
        windows_fs.install(monkeypatch)
    return request.param


@pytest.fixture
def root(tmp_path):
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def exported(micro_unet, tmp_path_factory):
    """The micro UNet's FP32 entry, exported once for the module; tests take copies of it."""
    root = tmp_path_factory.mktemp("exported")
    return engine.prepare_entry(micro_unet, root, "micro", engine.weights_hash(micro_unet)).entry


def cached(exported, root) -> cache.CacheEntry:
    """A copy of the exported entry in `root`, where a first export would have put it."""
    target = root / exported.path.relative_to(exported.path.parents[1])
    shutil.copytree(exported.path, target)
    return cache.validate(target)


@pytest.fixture
def key_hash(micro_unet):
    return engine.weights_hash(micro_unet)


def count_exports(monkeypatch):
    calls = []
    real = engine.export_unet

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "export_unet", counting)
    return calls


def test_second_load_converts_nothing(micro_unet, root, key_hash, monkeypatch):
    calls = count_exports(monkeypatch)
    first = engine.prepare_entry(micro_unet, root, "micro", key_hash)
    second = engine.prepare_entry(micro_unet, root, "micro", key_hash)
    assert first.exported and not second.exported
    assert calls == [1]
    assert second.entry.path == first.entry.path
    manifest = json.loads((first.entry.path / cache.MANIFEST).read_text())
    assert manifest["checkpoint"] == {"name": "micro", "hash": key_hash}
    assert manifest["unet"]["context_dim"] == 32
    assert {"unet.xml", "unet.bin"} <= set(manifest["files"])
    assert manifest["timings"]["convert_s"] > 0


def test_truncated_bin_is_detected_and_rebuilt(micro_unet, root, key_hash, exported, file_rules, monkeypatch):
    entry = cached(exported, root)
    bin_path = entry.path / "unet.bin"
    with open(bin_path, "r+b") as f:
        f.truncate(bin_path.stat().st_size // 2)
    found, problem = cache.find(root, cache.EntryKey("micro", key_hash, Recipe()))
    assert found is None and "unet.bin" in problem
    calls = count_exports(monkeypatch)
    again = engine.prepare_entry(micro_unet, root, "micro", key_hash)
    assert again.exported and calls == [1] and "unet.bin" in again.rebuilt_because
    assert cache.validate(again.entry.path).manifest.files["unet.bin"].size == bin_path.stat().st_size


def test_corrupted_bin_of_same_size_is_detected(micro_unet, root, key_hash, exported):
    entry = cached(exported, root)
    bin_path = entry.path / "unet.bin"
    data = bytearray(bin_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bin_path.write_bytes(bytes(data))
    assert "digest" in cache.find(root, cache.EntryKey("micro", key_hash, Recipe()))[1]


def test_edited_manifest_is_detected_and_rebuilt(micro_unet, root, key_hash, exported):
    entry = cached(exported, root)
    manifest_path = entry.path / cache.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["unet"]["context_dim"] = 768  # a hand edit that would make the runtime lie
    manifest_path.write_text(json.dumps(manifest))
    again = engine.prepare_entry(micro_unet, root, "micro", key_hash)
    assert again.exported and "edited" in again.rebuilt_because
    assert again.entry.manifest.unet.context_dim == 32


def test_unreadable_manifest_is_rebuilt(micro_unet, root, key_hash, exported):
    entry = cached(exported, root)
    (entry.path / cache.MANIFEST).write_text("{not json")
    again = engine.prepare_entry(micro_unet, root, "micro", key_hash)
    assert again.exported and "unreadable" in again.rebuilt_because


def _no_partial_entries(root):
    return [p for p in root.rglob("*") if cache.TMP_MARK in p.name or cache.TRASH_MARK in p.name]


def test_failed_export_leaves_no_entry(micro_unet, root, key_hash, monkeypatch, file_rules):
    def half_then_fail(unet, spec, folder, progress):
        (folder / "unet.xml").write_text("<net/>")
        (folder / "unet.bin").write_bytes(b"\0" * 100)
        raise ExportError("disk full (simulated)")

    monkeypatch.setattr(engine, "export_unet", half_then_fail)
    with pytest.raises(ExportError, match="disk full"):
        engine.prepare_entry(micro_unet, root, "micro", key_hash)
    key = cache.EntryKey("micro", key_hash, Recipe())
    assert not key.folder(root).exists()
    assert _no_partial_entries(root) == []


def test_cancel_during_export_leaves_no_entry(micro_unet, root, key_hash, file_rules):
    def cancel_when_saving(message, fraction):
        if "saving" in message:
            raise Cancelled("user pressed Interrupt")

    with pytest.raises(Cancelled):
        engine.prepare_entry(micro_unet, root, "micro", key_hash, progress=cancel_when_saving)
    assert cache.list_entries(root) == [] and _no_partial_entries(root) == []


def test_full_disk_is_refused_before_converting(micro_unet, root, key_hash, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(export.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ExportError, match="not enough disk space"):
        engine.prepare_entry(micro_unet, root, "micro", key_hash)
    assert cache.list_entries(root) == []


def test_a_compression_without_room_for_its_ir_is_refused_before_nncf_runs(tiny_entry, tmp_path, monkeypatch):
    """Hybrid writes a weight-compressed stage and the INT8 IR, each sized from the graph (a byte a
    weight, not the FP32 source's size): with room for one only, it is refused at once (a real
    Optimize filled the disk at the stage)."""
    import openvino as ov

    from sd_ov.runtime import compress

    source = tiny_entry.ir_path()
    one = compress.int8_ir_bytes(ov.Core().read_model(str(source)))
    assert one < source.with_suffix(".bin").stat().st_size / 2  # the FP32 source's size was the guess
    size = int(one * 1.5)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(export.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - size, size))
    monkeypatch.setattr(compress, "_quantize", lambda *a, **k: pytest.fail("NNCF ran"))
    with pytest.raises(ExportError, match="not enough disk space"):
        compress.compress_ir(source, tmp_path / "unet.xml", "hybrid", samples=[{"x": None}])
    assert list(tmp_path.iterdir()) == []


def test_a_save_that_fills_the_disk_says_so(tmp_path, monkeypatch):
    import openvino as ov
    import openvino.opset13 as ops

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(export.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 5, 5))

    def fails(*args, **kwargs):
        raise RuntimeError("basic_ios::clear: iostream error")  # what OpenVINO says on a full disk

    monkeypatch.setattr(export.ov, "save_model", fails)
    p = ops.parameter([1], ov.Type.f32)
    with pytest.raises(ExportError, match=r"iostream error \(the disk is full: 0.0 GiB free\)"):
        export.save_ir(ov.Model([ops.relu(p)], [p]), tmp_path / "m.xml")


def test_recipe_and_checkpoint_are_part_of_the_key(micro_unet, root, key_hash):
    a = engine.prepare_entry(micro_unet, root, "micro", key_hash).entry
    b = engine.prepare_entry(micro_unet, root, "micro", key_hash, Recipe().with_deepcache(0)).entry
    c = engine.prepare_entry(micro_unet, root, "micro", "0" * 64).entry
    assert len({a.path, b.path, c.path}) == 3
    assert len(cache.list_entries(root)) == 3
    cache.delete(b.path)
    assert {e.path for e in cache.list_entries(root)} == {a.path, c.path}


def test_leftovers_of_a_dead_process_are_cleaned(root, file_rules):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = root / "ckpt-abc" / f"fp32-1234{cache.TMP_MARK}{int(dead.stdout)}-deadbeef"
    mine = root / "ckpt-abc" / f"fp32-1234{cache.TMP_MARK}{os.getpid()}-cafecafe"
    for folder in (stale, mine):
        folder.mkdir(parents=True)
        (folder / "unet.bin").write_bytes(b"partial")
    removed = cache.cleanup_stale(root)
    assert removed == [stale] and mine.exists() and not stale.exists()
    shutil.rmtree(mine)


# Two webui processes sharing one cache folder: one exports, the other waits and reads the result.
SHARED_EXPORT = r"""
import sys, time
sys.path.insert(0, sys.argv[3])
from sd_ov.serve import engine
from sd_ov.graphs.ldm_unet import build_unet
from tests.conftest import MICRO
unet = build_unet(MICRO, seed=0)
report = lambda message, fraction: print(message, flush=True)
prepared = engine.prepare_entry(unet, sys.argv[1], "micro", sys.argv[2], progress=report)
print("RESULT", "exported" if prepared.exported else "reused", prepared.entry.path, flush=True)
"""


def test_two_processes_sharing_a_cache_export_once(micro_unet, root, key_hash):
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[2])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SHARED_EXPORT, str(root), key_hash, repo],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    results = sorted(
        line.split()[1] for out in outputs for line in out.splitlines() if line.startswith("RESULT")
    )
    assert results == ["exported", "reused"], outputs
    assert any("waiting for another process" in out for out in outputs), outputs
    assert len(cache.list_entries(root)) == 1 and not list(root.glob("*/*.tmp-*"))


# A disk that fills up while the IR is written: the file size limit makes writes fail as ENOSPC would.
FULL_DISK_EXPORT = r"""
import resource, signal, sys
sys.path.insert(0, sys.argv[3])
from sd_ov.serve import engine
from sd_ov.errors import ExportError
from sd_ov.graphs.ldm_unet import build_unet
from tests.conftest import MICRO
unet = build_unet(MICRO, seed=0)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
try:
    engine.prepare_entry(unet, sys.argv[1], "micro", sys.argv[2])
except ExportError as err:
    print("EXPORT-ERROR", err)
"""


def test_a_disk_that_fills_during_export_leaves_no_entry(root, key_hash):
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK_EXPORT, str(root), key_hash, repo], capture_output=True, text=True
    )
    assert "EXPORT-ERROR saving the OpenVINO IR" in done.stdout, done.stdout + done.stderr
    assert cache.list_entries(root) == [] and [p for p in root.glob("*/*") if p.is_dir()] == []


def test_manifest_of_another_version_or_checkpoint_and_missing_files_are_rebuilt(
    micro_unet, root, key_hash, exported
):
    entry = cached(exported, root)
    key = cache.EntryKey("micro", key_hash, Recipe())
    path = entry.path / cache.MANIFEST
    original = json.loads(path.read_text())

    def rewritten(**changes) -> str | None:
        """A manifest sealed with a valid digest, as another version or process would write it."""
        data = {**original, **changes}
        data["digest"] = cache._manifest_digest(data)
        path.write_text(json.dumps(data))
        return cache.find(root, key)[1]

    assert "newer than ours" in rewritten(openvino="2099.1.0")
    assert "made from checkpoint hash ffff" in rewritten(checkpoint={"name": "micro", "hash": "f" * 64})
    assert "cache format 99" in rewritten(format=99)
    assert "another recipe" in rewritten(recipe={"name": "fp32", "weights": "int8"})
    assert rewritten() is None  # the original again: valid
    (entry.path / "unet.xml").unlink()
    rebuilt = engine.prepare_entry(micro_unet, root, "micro", key_hash)
    assert rebuilt.exported and "unet.xml is missing" in rebuilt.rebuilt_because
