"""Windows' rename and delete rules, emulated on Linux so CI catches what would break there.

What Windows refuses and POSIX allows: deleting a file that is open or memory-mapped, renaming a
file or a folder that holds one, and renaming over an existing folder (`os.rename` over anything).
"In use" is read from the kernel, not declared by the test: a file this process has open
(/proc/self/fd) or maps (/proc/self/maps), so a compiled OpenVINO model really holds its IR.
`shutil.rmtree` takes the path Windows takes (no dir_fd functions).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

_real = {name: getattr(os, name) for name in ("replace", "rename", "unlink", "remove", "rmdir")}
refusals: list[tuple[str, str]] = []


def files_in_use() -> set[str]:
    used: set[str] = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/"):
                used.add(parts[5].strip().removesuffix(" (deleted)"))
    for fd in os.listdir("/proc/self/fd"):
        try:
            used.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return used


def _in_use(path: str | os.PathLike) -> str | None:
    """The file under `path` (a file, or a folder's tree) that is open or mapped, if any."""
    target = os.path.realpath(path)
    for used in files_in_use():
        if used == target or used.startswith(target + os.sep):
            return used
    return None


def _refuse(operation: str, path: str | os.PathLike, why: str) -> None:
    refusals.append((operation, str(path)))
    err = PermissionError(errno.EACCES, f"[WinError 32] emulated: {why}", str(path))
    err.winerror = 32
    raise err


def _replace(src, dst, *args, **kwargs):
    if os.path.isdir(dst):
        _refuse("replace", dst, "cannot rename over an existing folder")
    if (used := _in_use(src)) or (os.path.exists(dst) and (used := _in_use(dst))):
        _refuse("replace", src, f"{used} is in use")
    return _real["replace"](src, dst, *args, **kwargs)


def _rename(src, dst, *args, **kwargs):
    if os.path.exists(dst):
        raise FileExistsError(errno.EEXIST, "[WinError 183] emulated: the target exists", str(dst))
    return _replace(src, dst, *args, **kwargs)


def _unlink(path, *args, **kwargs):
    if used := _in_use(path):
        _refuse("unlink", path, f"{used} is in use")
    return _real["unlink"](path, *args, **kwargs)


def install(monkeypatch=None) -> None:
    """Switch this process to Windows' rules (through pytest's monkeypatch when given, so they are
    undone after the test; child processes call it without one)."""
    patches = [
        (os, "replace", _replace),
        (os, "rename", _rename),
        (os, "unlink", _unlink),
        (os, "remove", _unlink),
        (shutil, "_use_fd_functions", False),
    ]
    for module, name, value in patches:
        if monkeypatch is not None:
            monkeypatch.setattr(module, name, value)
        else:
            setattr(module, name, value)


def leftovers(root: Path) -> list[Path]:
    return sorted(p for p in Path(root).rglob("*") if p.is_file())
