"""The on-disk cache of optimized UNets: one folder per checkpoint and recipe.

Layout: `<root>/<checkpoint name>-<short hash>/<recipe key>/{unet.xml, unet.bin, manifest.json}`.
An entry is built in a temporary sibling folder and renamed into place only once complete, so
a crash, a cancel or a full disk never leaves a half entry where a later start would load it.
A manifest carries a digest of itself and of every file; anything that does not match (a
truncated .bin, an edited manifest, another checkpoint or recipe) is reported and rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openvino as ov

from . import __version__
from .errors import CacheEntryInvalid

MANIFEST = "manifest.json"
FORMAT = 1
TMP_MARK = ".tmp-"
TRASH_MARK = ".trash-"
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
    """What identifies an entry: the checkpoint's weights and the recipe applied to them."""

    checkpoint_name: str
    checkpoint_hash: str
    recipe: dict[str, Any] = field(hash=False)

    def folder(self, root: Path) -> Path:
        return (
            Path(root)
            / f"{safe_name(self.checkpoint_name)}-{self.checkpoint_hash[:10]}"
            / recipe_key(self.recipe)
        )


@dataclass
class CacheEntry:
    path: Path
    manifest: dict[str, Any]

    @property
    def xml_path(self) -> Path:
        return self.path / self.manifest["ir"]

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
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError as err:
        raise CacheEntryInvalid(f"{path}: no manifest") from err
    except (OSError, ValueError) as err:
        raise CacheEntryInvalid(f"{path}: unreadable manifest ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("digest") != _manifest_digest(manifest):
        raise CacheEntryInvalid(f"{path}: the manifest was edited or damaged (digest mismatch)")
    if manifest.get("format") != FORMAT:
        raise CacheEntryInvalid(f"{path}: cache format {manifest.get('format')}, expected {FORMAT}")
    if _writer_is_newer(str(manifest.get("openvino", ""))):
        raise CacheEntryInvalid(f"{path}: written by OpenVINO {manifest.get('openvino')}, newer than ours")
    if key is not None:
        ckpt = manifest.get("checkpoint", {})
        if ckpt.get("hash") != key.checkpoint_hash:
            raise CacheEntryInvalid(
                f"{path}: made from checkpoint hash {ckpt.get('hash')}, not {key.checkpoint_hash}"
            )
        if canonical(manifest.get("recipe")) != canonical(key.recipe):
            raise CacheEntryInvalid(f"{path}: made with another recipe")
    for name, meta in manifest.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise CacheEntryInvalid(f"{path}: {name} is missing")
        if file.stat().st_size != meta.get("size"):
            raise CacheEntryInvalid(
                f"{path}: {name} has {file.stat().st_size} bytes, the manifest says {meta.get('size')}"
            )
        if file_digest(file) != meta.get("digest"):
            raise CacheEntryInvalid(f"{path}: {name} does not match its digest")
    if manifest.get("ir") not in manifest.get("files", {}):
        raise CacheEntryInvalid(f"{path}: the manifest names no IR file")
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


def _remove(path: Path) -> None:
    """Move aside, then delete: the entry's name is free at once even if deletion is slow."""
    if not path.exists():
        return
    trash = path.with_name(f"{path.name}{TRASH_MARK}{uuid.uuid4().hex[:8]}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def delete(path: Path) -> None:
    """Delete one entry, and its checkpoint folder when that becomes empty."""
    _remove(Path(path))
    with contextlib.suppress(OSError):
        Path(path).parent.rmdir()


def write(
    root: Path,
    key: EntryKey,
    build: Callable[[Path], dict[str, Any]],
    ir_name: str = "unet.xml",
) -> CacheEntry:
    """Build an entry in a temporary folder, seal it with a manifest, then rename it into place.

    `build(folder)` writes the IR (and anything else) into `folder` and returns manifest fields
    (timings, spec, report). On any exception the temporary folder is removed and nothing
    appears under the entry's name.
    """
    final = key.folder(root)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        extra = build(tmp)
        files = {
            p.name: {"size": p.stat().st_size, "digest": file_digest(p)}
            for p in sorted(tmp.iterdir())
            if p.is_file()
        }
        if ir_name not in files:
            raise CacheEntryInvalid(f"the build wrote no {ir_name}")
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "sd_ov": __version__,
            "openvino": ov.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "checkpoint": {"name": key.checkpoint_name, "hash": key.checkpoint_hash},
            "recipe": key.recipe,
            "ir": ir_name,
            "files": files,
            "disk_bytes": sum(f["size"] for f in files.values()),
            **extra,
        }
        manifest["digest"] = _manifest_digest(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        with open(tmp / MANIFEST, "rb") as f:
            os.fsync(f.fileno())
        _remove(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CacheEntry(final, manifest)


def update_manifest(entry: CacheEntry, **fields: Any) -> CacheEntry:
    """Add fields (a report, measured timings) to a sealed entry, atomically."""
    manifest = {**entry.manifest, **fields}
    manifest["digest"] = _manifest_digest(manifest)
    tmp = entry.path / f"{MANIFEST}{TMP_MARK}{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, entry.path / MANIFEST)
    entry.manifest = manifest
    return entry


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(root: Path) -> list[Path]:
    """Remove temporary and trash folders left by processes that died mid-write."""
    removed: list[Path] = []
    root = Path(root)
    if not root.is_dir():
        return removed
    for folder in root.glob("*/*"):
        name = folder.name
        if TRASH_MARK in name:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        elif TMP_MARK in name:
            pid_part = name.split(TMP_MARK, 1)[1].split("-", 1)[0]
            if not pid_part.isdigit() or not _pid_alive(int(pid_part)):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


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
