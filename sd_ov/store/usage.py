"""How much of the user's disk the cache takes: entries, their compiled blobs, the whole folder.

The manifest lists what an entry is made of; OpenVINO's compiled blobs (its CACHE_DIR inside the
entry) are about as large as the IR again (SDXL FP32: 10 GB) and must be counted and deletable too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from . import fs


class _HasBlobs(Protocol):
    @property
    def blob_dir(self) -> Path: ...


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under `folder` (0 when it is absent); files that vanish meanwhile
    (another process cleaning up) count as gone."""
    total = 0
    for path in Path(folder).rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:
            continue
    return total


def compiled_bytes(entry: _HasBlobs) -> int:
    """The compiled blobs OpenVINO keeps in the entry (its CACHE_DIR): not in the manifest, which
    lists what the entry is made of, but on the user's disk all the same (SDXL FP32: 10 GB)."""
    return folder_bytes(entry.blob_dir)


def drop_compiled(entry: _HasBlobs) -> list[Path]:
    """Delete the entry's compiled blobs (the entry stays valid: the next compile reads the IR and
    writes them again, if the setting keeps them). Returns the files a compiled model still maps."""
    return fs.remove_tree(entry.blob_dir)


def total_bytes(root: Path) -> int:
    """Everything under the cache folder: entries, their compiled blobs, and what is left over."""
    return folder_bytes(root)
