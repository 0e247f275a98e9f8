"""The cache: reuse without converting, detect damage and rebuild, never leave a half entry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import namedtuple

import pytest

from sd_ov import cache, engine, export
from sd_ov.errors import Cancelled, ExportError


@pytest.fixture
def root(tmp_path):
    return tmp_path / "cache"


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


def test_truncated_bin_is_detected_and_rebuilt(micro_unet, root, key_hash, monkeypatch):
    entry = engine.prepare_entry(micro_unet, root, "micro", key_hash).entry
    bin_path = entry.path / "unet.bin"
    with open(bin_path, "r+b") as f:
        f.truncate(bin_path.stat().st_size // 2)
    found, problem = cache.find(root, cache.EntryKey("micro", key_hash, engine.FP32_RECIPE))
    assert found is None and "unet.bin" in problem
    calls = count_exports(monkeypatch)
    again = engine.prepare_entry(micro_unet, root, "micro", key_hash)
    assert again.exported and calls == [1] and "unet.bin" in again.rebuilt_because
    assert cache.validate(again.entry.path).manifest["files"]["unet.bin"]["size"] == bin_path.stat().st_size


def test_corrupted_bin_of_same_size_is_detected(micro_unet, root, key_hash):
    entry = engine.prepare_entry(micro_unet, root, "micro", key_hash).entry
    bin_path = entry.path / "unet.bin"
    data = bytearray(bin_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bin_path.write_bytes(bytes(data))
    assert "digest" in cache.find(root, cache.EntryKey("micro", key_hash, engine.FP32_RECIPE))[1]


def test_edited_manifest_is_detected_and_rebuilt(micro_unet, root, key_hash):
    entry = engine.prepare_entry(micro_unet, root, "micro", key_hash).entry
    manifest_path = entry.path / cache.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["unet"]["context_dim"] = 768  # a hand edit that would make the runtime lie
    manifest_path.write_text(json.dumps(manifest))
    again = engine.prepare_entry(micro_unet, root, "micro", key_hash)
    assert again.exported and "edited" in again.rebuilt_because
    assert again.entry.manifest["unet"]["context_dim"] == 32


def test_unreadable_manifest_is_rebuilt(micro_unet, root, key_hash):
    entry = engine.prepare_entry(micro_unet, root, "micro", key_hash).entry
    (entry.path / cache.MANIFEST).write_text("{not json")
    again = engine.prepare_entry(micro_unet, root, "micro", key_hash)
    assert again.exported and "unreadable" in again.rebuilt_because


def _no_partial_entries(root):
    return [p for p in root.rglob("*") if cache.TMP_MARK in p.name or cache.TRASH_MARK in p.name]


def test_failed_export_leaves_no_entry(micro_unet, root, key_hash, monkeypatch):
    def half_then_fail(unet, spec, folder, progress):
        (folder / "unet.xml").write_text("<net/>")
        (folder / "unet.bin").write_bytes(b"\0" * 100)
        raise ExportError("disk full (simulated)")

    monkeypatch.setattr(engine, "export_unet", half_then_fail)
    with pytest.raises(ExportError, match="disk full"):
        engine.prepare_entry(micro_unet, root, "micro", key_hash)
    key = cache.EntryKey("micro", key_hash, engine.FP32_RECIPE)
    assert not key.folder(root).exists()
    assert _no_partial_entries(root) == []


def test_cancel_during_export_leaves_no_entry(micro_unet, root, key_hash):
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


def test_recipe_and_checkpoint_are_part_of_the_key(micro_unet, root, key_hash):
    a = engine.prepare_entry(micro_unet, root, "micro", key_hash).entry
    b = engine.prepare_entry(micro_unet, root, "micro", key_hash, {"name": "other", "weights": "fp32"}).entry
    c = engine.prepare_entry(micro_unet, root, "micro", "0" * 64).entry
    assert len({a.path, b.path, c.path}) == 3
    assert len(cache.list_entries(root)) == 3
    cache.delete(b.path)
    assert {e.path for e in cache.list_entries(root)} == {a.path, c.path}


def test_leftovers_of_a_dead_process_are_cleaned(root):
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
