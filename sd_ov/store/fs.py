"""File operations that hold on Windows as they do on Linux.

Windows refuses what POSIX allows: deleting a file that is open or memory-mapped (OpenVINO maps
an IR's `.bin`, and an imported blob, for as long as a compiled model lives), renaming a folder
while a file inside it is open, and renaming over an existing folder. Antivirus scanners and the
search indexer also open freshly written files for a moment, so a rename right after a write may
fail once and succeed a little later. Every write, replacement and deletion of the cache goes
through here, so the same code is correct on both.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil

T = TypeVar("T")

# A scanner's hold on a new file lasts milliseconds to a second: ~3 s of retries in all.
RETRY_PAUSES_S = (0.05, 0.1, 0.2, 0.4, 0.8, 1.5)


def retrying(operation: Callable[..., T], *args: object, pauses: tuple[float, ...] = RETRY_PAUSES_S) -> T:
    """Run `operation(*args)`, again after each pause while Windows says the file is in use."""
    for pause in pauses:
        try:
            return operation(*args)
        except PermissionError:
            time.sleep(pause)
    return operation(*args)


def move_into_place(source: Path, target: Path) -> None:
    """Rename a finished folder (or file) to `target`, which must not exist as a folder: Windows
    never renames over one, so callers free the name first."""
    retrying(os.replace, source, target)


def remove_tree(path: Path) -> list[Path]:
    """Delete a folder as far as possible; returns the files left because they are in use
    (open or mapped, on Windows) - removed by a later cleanup once they are released."""
    left: list[Path] = []

    def note(function: Callable, name: str, error: BaseException | tuple) -> None:
        if function in (os.unlink, os.remove):
            left.append(Path(name))

    if Path(path).is_dir():
        shutil.rmtree(path, onerror=note)
    else:
        remove_file(Path(path))
    return [p for p in left if p.exists()]


def remove_file(path: Path) -> bool:
    """Delete a file; False if it is in use (Windows) and stays until released."""
    try:
        retrying(Path(path).unlink, True, pauses=(0.05, 0.2))
        return True
    except PermissionError:
        return False


def pid_alive(pid: int) -> bool:
    """Whether a process exists. Not `os.kill(pid, 0)`: on Windows that terminates the process."""
    return psutil.pid_exists(pid)
