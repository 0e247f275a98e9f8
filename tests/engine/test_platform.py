"""Windows as a first-class platform, checked on Linux: the engine imports without POSIX-only
modules, and the cache's write, replace and delete paths hold under Windows' file rules
(emulated: tests/windows_fs.py) with a compiled model really mapping its files."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sd_ov.errors import CacheEntryInUse
from sd_ov.runtime.memory import peak_rss_mib, rss_mib
from sd_ov.serve import engine
from sd_ov.store import cache
from sd_ov.store.recipe import Recipe

from .. import windows_fs
from ..conftest import unet_inputs

ROOT = Path(__file__).resolve().parents[2]

# A child where fcntl, resource and the other POSIX-only modules cannot be imported (as on
# Windows), under Windows' file rules: every engine module imports, and an entry is written under
# its lock, replaced and deleted. Libraries with a backend per platform (psutil, filelock, torch)
# load theirs first: the check is that sd-ov itself needs none of these modules.
WITHOUT_POSIX = r"""
import sys
import filelock, numpy, openvino, psutil, torch
for name in ("fcntl", "resource", "termios", "pwd", "grp"):
    sys.modules[name] = None
sys.path.insert(0, sys.argv[1])
import importlib, pkgutil
import sd_ov
for module in [m for m in pkgutil.iter_modules(sd_ov.__path__) if m.name != "__main__"]:
    importlib.import_module(f"sd_ov.{module.name}")
import sd_ov.serve.engine, sd_ov.store.cache
from pathlib import Path
from sd_ov.store import cache
from sd_ov.runtime import memory
from tests import windows_fs
windows_fs.install()
root = Path(sys.argv[2])
key = cache.EntryKey("Zoë's model v1", "ab" * 32, component="vae")  # no UNet spec to fake
def build(folder):
    (folder / "unet.xml").write_text("<net/>")
    (folder / "unet.bin").write_bytes(b"weights")
    return {}
for _ in range(2):  # written, then replaced (the name taken: delete first, then rename)
    with cache.entry_lock(root, key):
        entry = cache.write(root, key, build)
assert [e.path for e in cache.list_entries(root)] == [entry.path]
assert cache.delete(entry.path) == [] and cache.list_entries(root) == []
assert memory.rss_mib() > 0 and memory.peak_rss_mib() >= memory.rss_mib() * 0.9
print("OK")
"""


def test_the_engine_imports_and_keeps_its_cache_without_posix_modules(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_POSIX, str(ROOT), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and "OK" in done.stdout, done.stdout + done.stderr[-3000:]


@pytest.fixture
def windows(monkeypatch):
    windows_fs.install(monkeypatch)


def test_a_cache_under_a_path_with_spaces_and_non_ascii_letters_serves(micro_unet, tmp_path, windows):
    root = tmp_path / "Stable Diffusion Zoë 模型" / "sd ov cache"
    name = "Später hinzugefügt v1 [0123abcd]"
    key_hash = engine.weights_hash(micro_unet)
    entry = engine.prepare_entry(micro_unet, root, name, key_hash).entry
    runtime = engine.open_unet(entry)  # blobs in the entry's own folder
    inputs = unet_inputs(2, 8, 8, 77, 32, seed=1)
    with torch.no_grad():
        expected = micro_unet(*inputs)
    assert torch.allclose(runtime(*inputs), expected, atol=1e-4, rtol=1e-4)
    runtime.release()
    assert engine.prepare_entry(micro_unet, root, name, key_hash).entry.path == entry.path  # found again


@pytest.fixture
def served_entry(micro_unet, tmp_path):
    """An entry, and a compiled model of it that still holds its files (as a serving webui does)."""
    root = tmp_path / "cache"
    entry = engine.prepare_entry(micro_unet, root, "micro", engine.weights_hash(micro_unet)).entry
    runtime = engine.open_unet(entry, cache_compiled=False)
    runtime(*unet_inputs(2, 8, 8, 77, 32, seed=1))
    return root, entry, runtime


def test_an_entry_in_use_is_retired_at_once_and_removed_once_released(served_entry, windows):
    root, entry, runtime = served_entry
    held = windows_fs._in_use(entry.path)  # the compiled model maps its IR's weights
    left = cache.delete(entry.path)
    key = cache.EntryKey("micro", entry.manifest.checkpoint_hash)
    assert cache.list_entries(root) == [] and cache.find(root, key)[0] is None
    assert bool(left) == bool(held), (left, held)
    assert not (entry.path / cache.MANIFEST).exists()  # never a half entry that looks valid
    assert (entry.path / cache.RETIRED_MARK).is_file() == bool(held)
    assert runtime(*unet_inputs(2, 8, 8, 77, 32, seed=2)).isfinite().all()  # the served model works on
    runtime.release()
    del runtime
    gc.collect()
    cache.cleanup_stale(root)
    assert not entry.path.exists()


def test_replacing_an_entry_in_use_says_so_and_works_once_released(served_entry, micro_unet, windows):
    root, entry, runtime = served_entry
    key_hash = engine.weights_hash(micro_unet)
    (entry.path / cache.MANIFEST).write_text("{damaged")
    if windows_fs._in_use(entry.path):
        with pytest.raises(CacheEntryInUse, match="still maps its files"):
            engine.prepare_entry(micro_unet, root, "micro", key_hash)
        assert cache.find(root, cache.EntryKey("micro", key_hash, Recipe()))[0] is None
    runtime.release()
    del runtime
    gc.collect()
    rebuilt = engine.prepare_entry(micro_unet, root, "micro", key_hash)
    assert rebuilt.exported and cache.validate(rebuilt.entry.path).manifest.checkpoint_hash == key_hash
    assert [p for p in root.rglob("*") if cache.TMP_MARK in p.name or cache.TRASH_MARK in p.name] == []


def test_process_memory_figures_come_from_psutil():
    before = rss_mib()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    assert rss_mib() - before > 48
    assert peak_rss_mib() >= rss_mib() - 1
    del block


def test_cleanup_removes_only_what_sd_ov_left(tmp_path):
    """A cache folder the user shares with other files: only our temporary, trash and retired
    folders go, never an unmarked folder without a manifest."""
    root = tmp_path / "models"
    theirs = root / "Lora" / "characters"
    theirs.mkdir(parents=True)
    (theirs / "style.safetensors").write_bytes(b"weights")
    retired = root / "ckpt-abc" / "fp32-1234"
    retired.mkdir(parents=True)
    (retired / cache.RETIRED_MARK).touch()
    (retired / "unet.bin").write_bytes(b"released now")
    assert cache.cleanup_stale(root) == [retired]
    assert (theirs / "style.safetensors").exists() and not retired.exists()


def test_the_peak_sampler_sees_an_allocation_and_names_its_phase():
    """Optimize's peak is sampled (the process's VmHWM is the webui's since it began): a 400 MiB
    buffer held for a second in one phase is the peak, and that phase is named."""
    import time

    import numpy as np

    from sd_ov.optimize.peak_memory import PeakSampler

    with PeakSampler(every_s=0.05) as peak:
        progress = peak.tagging(lambda m, f: None)
        progress("small", 0.0)
        time.sleep(0.3)
        progress("large", 0.5)
        buffer = np.ones(400 * 2**20 // 8)
        time.sleep(0.5)
        del buffer
        progress("after", 1.0)
        time.sleep(0.2)
    assert peak.peak_phase == "large"
    assert peak.peak_mib >= peak.start_mib + 350
