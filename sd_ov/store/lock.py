"""The write lock of one cache entry: an OS lock file beside the entry's folder, so that two webui
processes sharing a cache folder write an entry once (the second waits, then finds it). Through
`filelock`, the same on Windows as on Linux; the system releases it if its holder dies."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import filelock

from ..progress import ProgressFn, silent

LOCK_SUFFIX = ".lock"


@contextlib.contextmanager
def folder_lock(folder: Path, progress: ProgressFn = silent, poll_s: float = 0.5) -> Iterator[None]:
    """Hold the write lock of the entry at `folder` (an OS lock, released by the system if the
    holder dies; on Windows as on Linux, through `filelock`).

    Two webui processes may share one cache folder: the second waits here, with progress (which
    can cancel), and then finds the entry the first one wrote instead of exporting it again.
    """
    path = folder.with_name(folder.name + LOCK_SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(path, thread_local=False)
    while True:
        try:
            lock.acquire(timeout=0)
            break
        except filelock.Timeout:
            progress("waiting for another process writing this OpenVINO UNet to the cache", 0.0)
            time.sleep(poll_s)
    try:
        yield
    finally:
        lock.release()
