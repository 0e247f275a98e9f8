"""Removing cache entries, on Windows as on Linux: an entry is moved aside and deleted, or - when a
compiled model still maps its files (Windows refuses both then) - retired in place and removed by
a later cleanup. Split from cache.py, which writes and finds entries."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path

from . import fs

MANIFEST = "manifest.json"  # the file that makes an entry valid (cache.py writes it last)
TMP_MARK = ".tmp-"
TRASH_MARK = ".trash-"
RETIRED_MARK = "retired"  # a file in an entry retired while in use (Windows)


def _retire(path: Path) -> list[Path]:
    """Make an entry that cannot be moved invalid at once (its manifest first), delete what can be
    deleted, and mark what stays as ours to remove (`cleanup_stale` deletes nothing unmarked: the
    cache folder may be one the user shares with other files). Returns the files still in use."""
    fs.remove_file(path / MANIFEST)
    left = fs.remove_tree(path)
    if left:
        (path / RETIRED_MARK).touch()
    return left


def remove(path: Path) -> list[Path]:
    """Move aside, then delete: the entry's name is free at once even if deletion is slow. An entry
    in use (Windows) is retired in place; returns the files that stay until released."""
    if not path.exists():
        return []
    trash = path.with_name(f"{path.name}{TRASH_MARK}{uuid.uuid4().hex[:8]}")
    try:
        fs.move_into_place(path, trash)
    except PermissionError:
        return _retire(path)
    return fs.remove_tree(trash)


def delete(path: Path) -> list[Path]:
    """Delete one entry, and its checkpoint folder when that becomes empty. Returns the files a
    compiled model still maps (Windows): the entry is gone from every list at once, and those files
    go at the next cleanup after they are released."""
    left = remove(Path(path))
    with contextlib.suppress(OSError):
        Path(path).parent.rmdir()
    return left


def cleanup_stale(root: Path) -> list[Path]:
    """Remove what earlier processes left: temporary folders of writers that died, trash, and
    entries retired while in use (marked). Files still in use stay for a later cleanup."""
    removed: list[Path] = []
    root = Path(root)
    if not root.is_dir():
        return removed
    for folder in root.glob("*/*"):
        name = folder.name
        if not folder.is_dir():
            continue
        if TMP_MARK in name:
            pid_part = name.split(TMP_MARK, 1)[1].split("-", 1)[0]
            if pid_part.isdigit() and fs.pid_alive(int(pid_part)):
                continue
        elif TRASH_MARK not in name and not (folder / RETIRED_MARK).is_file():
            continue
        fs.remove_tree(folder)
        removed.append(folder)
    return removed
