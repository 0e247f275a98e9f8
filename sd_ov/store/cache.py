"""The on-disk cache of optimized UNets: one folder per checkpoint and recipe.

Layout: `<root>/<checkpoint name>-<short hash>/<recipe key>/{unet.xml, unet.bin, manifest.json}`.
An entry is built in a temporary sibling folder and renamed into place only once complete, so
a crash, a cancel or a full disk never leaves a half entry where a later start would load it.
A manifest carries a digest of itself and of every file; anything that does not match (a
truncated .bin, an edited manifest, another checkpoint or recipe) is reported and rebuilt.

On Windows a file that a compiled model maps can be neither deleted nor moved (`fs`): an entry
in use is then retired instead - its manifest goes first, so no process finds it valid again -
and what is still mapped is removed by a later cleanup, once released.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import openvino as ov

from .. import __version__
from ..errors import CacheEntryInUse, CacheEntryInvalid
from ..progress import ProgressFn, silent
from . import fs
from .lock import LOCK_SUFFIX, folder_lock  # noqa: F401
from .manifest import FORMAT, FileRecord, Manifest, Report
from .recipe import Recipe
from .removal import MANIFEST, RETIRED_MARK, TMP_MARK, TRASH_MARK, cleanup_stale, delete  # noqa: F401
from .removal import remove as _remove
from .usage import compiled_bytes, drop_compiled, folder_bytes, total_bytes  # noqa: F401

_FULL_HASH_LIMIT = 8 * 2**20
_SAMPLES = 16
_SAMPLE_BYTES = 64 * 2**10


def safe_name(name: str) -> str:
    """A folder name from a checkpoint title: no separators, no spaces, no surprises."""
    name = re.sub(r"\[[0-9a-f]{8,}\]", "", name)  # the webui appends "[hash]" to titles
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return name[:80] or "checkpoint"


def canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def recipe_key(recipe: dict[str, Any]) -> str:
    """Folder name of a recipe: readable name plus a hash of everything in it."""
    digest = hashlib.sha256(canonical(recipe).encode()).hexdigest()[:8]
    return f"{safe_name(str(recipe.get('name', 'recipe')))}-{digest}"


def file_digest(path: Path) -> str:
    """sha256 of small files; of the size and 16 spread samples for big ones.

    Hashing a 3.4 GB .bin fully at every start would cost seconds; sampling still catches
    truncation, replacement and most corruption, and the size is checked exactly anyway.
    """
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= _FULL_HASH_LIMIT:
            h.update(f.read())
        else:
            step = (size - _SAMPLE_BYTES) // (_SAMPLES - 1)
            for i in range(_SAMPLES):
                f.seek(i * step)
                h.update(f.read(_SAMPLE_BYTES))
    return h.hexdigest()


def _manifest_digest(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return hashlib.sha256(canonical(body).encode()).hexdigest()


@dataclass(frozen=True)
class EntryKey:
    """What identifies an entry: the checkpoint's weights, the recipe applied to them, and the
    component (the UNet, or the VAE, whose hash is then of its own weights: the webui swaps VAEs)."""

    checkpoint_name: str
    checkpoint_hash: str
    recipe: Recipe = Recipe()
    component: str = "unet"

    def folder(self, root: Path) -> Path:
        name = recipe_key(self.recipe.key())
        return (
            Path(root)
            / f"{safe_name(self.checkpoint_name)}-{self.checkpoint_hash[:10]}"
            / (name if self.component == "unet" else f"{self.component}-{name}")
        )


def entry_lock(
    root: str | Path, key: EntryKey, progress: ProgressFn = silent
) -> contextlib.AbstractContextManager:
    """The write lock of `key`'s entry under `root` (`lock.folder_lock`)."""
    return folder_lock(key.folder(Path(root)), progress)


@dataclass
class CacheEntry:
    path: Path
    manifest: Manifest

    @property
    def xml_path(self) -> Path:
        return self.path / self.manifest.ir

    def ir_path(self, model: str | None = None) -> Path:
        """The entry's main IR, or one of DeepCache's ("full", "shallow")."""
        return self.xml_path if model is None else self.path / self.manifest.models[model]

    @property
    def blob_dir(self) -> Path:
        """Where OpenVINO keeps compiled blobs of this entry (its own CACHE_DIR)."""
        return self.path / "compiled"


def _writer_is_newer(version: str) -> bool:
    """An IR written by a newer OpenVINO than ours may not load; older ones do."""

    def parts(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", v.split("-")[0])[:3])

    try:
        return parts(version) > parts(ov.__version__)
    except ValueError:
        return True


def validate(path: Path, key: EntryKey | None = None) -> CacheEntry:
    """Load an entry's manifest and check it against its files and the expected key."""
    manifest_path = path / MANIFEST
    try:
        raw = json.loads(manifest_path.read_text())
    except FileNotFoundError as err:
        raise CacheEntryInvalid(f"{path}: no manifest") from err
    except (OSError, ValueError) as err:
        raise CacheEntryInvalid(f"{path}: unreadable manifest ({err})") from err
    if not isinstance(raw, dict) or raw.get("digest") != _manifest_digest(raw):
        raise CacheEntryInvalid(f"{path}: the manifest was edited or damaged (digest mismatch)")
    if raw.get("format") != FORMAT:
        raise CacheEntryInvalid(f"{path}: cache format {raw.get('format')}, expected {FORMAT}")
    if _writer_is_newer(str(raw.get("openvino", ""))):
        raise CacheEntryInvalid(f"{path}: written by OpenVINO {raw.get('openvino')}, newer than ours")
    try:
        manifest = Manifest.from_json(raw)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CacheEntryInvalid(f"{path}: not an sd-ov manifest ({type(err).__name__}: {err})") from err
    if key is not None:
        if manifest.checkpoint_hash != key.checkpoint_hash:
            raise CacheEntryInvalid(
                f"{path}: made from checkpoint hash {manifest.checkpoint_hash}, not {key.checkpoint_hash}"
            )
        if canonical(raw.get("recipe")) != canonical(key.recipe.key()):
            raise CacheEntryInvalid(f"{path}: made with another recipe")
        if manifest.component != key.component:
            raise CacheEntryInvalid(f"{path}: holds the {manifest.component}, not the {key.component}")
    for name, meta in manifest.files.items():
        file = path / name
        if not file.is_file():
            raise CacheEntryInvalid(f"{path}: {name} is missing")
        if file.stat().st_size != meta.size:
            raise CacheEntryInvalid(
                f"{path}: {name} has {file.stat().st_size} bytes, the manifest says {meta.size}"
            )
        if file_digest(file) != meta.digest:
            raise CacheEntryInvalid(f"{path}: {name} does not match its digest")
    if manifest.ir not in manifest.files or any(m not in manifest.files for m in manifest.models.values()):
        raise CacheEntryInvalid(f"{path}: the manifest names an IR file it does not list")
    return CacheEntry(path, manifest)


def find(root: Path, key: EntryKey) -> tuple[CacheEntry | None, str | None]:
    """The valid entry for `key`, or (None, why not) when it is absent or must be rebuilt."""
    folder = key.folder(root)
    if not folder.exists():
        return None, None
    try:
        return validate(folder, key), None
    except CacheEntryInvalid as err:
        return None, str(err)


def write(
    root: Path,
    key: EntryKey,
    build: Callable[[Path], dict[str, Any]],
    ir_name: str = "unet.xml",
) -> CacheEntry:
    """Build an entry in a temporary folder, seal it with a manifest, then rename it into place.

    `build(folder)` writes the IR (and anything else) into `folder` and returns `Manifest` fields
    (unet, timings, models, ...). On any exception the temporary folder is removed and nothing
    appears under the entry's name. Callers that may race another process hold `entry_lock`.
    """
    final = key.folder(root)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        extra = build(tmp)
        files = {
            p.name: FileRecord(p.stat().st_size, file_digest(p)) for p in sorted(tmp.iterdir()) if p.is_file()
        }
        if ir_name not in files:
            raise CacheEntryInvalid(f"the build wrote no {ir_name}")
        manifest = Manifest(
            checkpoint_name=key.checkpoint_name,
            checkpoint_hash=key.checkpoint_hash,
            recipe=key.recipe,
            component=key.component,
            ir=ir_name,
            files=files,
            sd_ov=__version__,
            openvino=ov.__version__,
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **extra,
        )
        _write_manifest(tmp / MANIFEST, manifest)
        if _remove(final):
            raise CacheEntryInUse(
                f"{final} cannot be replaced: a compiled model (in this or another process) still maps"
                " its files. It was retired; close that model (or restart the webui) and try again."
            )
        fs.move_into_place(tmp, final)
    except BaseException:
        fs.remove_tree(tmp)
        raise
    return CacheEntry(final, manifest)


def _write_manifest(path: Path, manifest: Manifest) -> None:
    data = manifest.to_json()
    data["digest"] = _manifest_digest(data)
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True))
        f.flush()
        os.fsync(f.fileno())


def update_report(entry: CacheEntry, report: Report) -> CacheEntry:
    """Add Optimize's report to a sealed entry, atomically."""
    manifest = replace(entry.manifest, report=report)
    tmp = entry.path / f"{MANIFEST}{TMP_MARK}{os.getpid()}"
    try:
        _write_manifest(tmp, manifest)
        fs.move_into_place(tmp, entry.path / MANIFEST)
    finally:
        fs.remove_file(tmp)
    entry.manifest = manifest
    return entry


def list_entries(root: Path) -> list[CacheEntry]:
    """Every valid entry under `root` (invalid ones are skipped; `find` reports them)."""
    entries = []
    for manifest in sorted(Path(root).glob(f"*/*/{MANIFEST}")):
        if TMP_MARK in manifest.parent.name or TRASH_MARK in manifest.parent.name:
            continue
        try:
            entries.append(validate(manifest.parent))
        except CacheEntryInvalid:
            continue
    return entries


def find_or_write(
    root: Path, key: EntryKey, build: Callable[[Path], dict], ir_name: str, what: str, progress: ProgressFn
) -> CacheEntry:
    """The valid entry for `key`, or one written by `build` (under the entry's lock, so two
    processes write it once); a damaged entry is rebuilt, and the progress says why."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    entry, _ = find(root, key)
    if entry is not None:
        return entry
    with entry_lock(root, key, progress):
        entry, problem = find(root, key)
        if entry is not None:
            return entry
        if problem:
            progress(f"{what} cache entry invalid, rebuilding ({problem})", 0.0)
        return write(root, key, build, ir_name=ir_name)
