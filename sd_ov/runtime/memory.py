"""Resident memory: give back the pages of a memory-mapped IR once the weights are compiled.

OpenVINO maps an IR's `.bin` and the CPU plugin copies (repacks) the weights it compiles, but the
compiled model keeps the mapping alive. Every page read while compiling then stays resident:
3.4 GB for SD1.5, beside the 3.3 GB compiled copy (measured: RSS 6.8 GB → 3.5 GB after this, and
inference did not touch the pages again). A compiled model imported from the blob cache (`CACHE_DIR`)
is the same story: the CPU plugin maps the blob, copies the weights out, and the mapping keeps all
of its pages (SD1.5 FP32: 3.2 GB of file pages beside 4.0 GB anonymous; given back, the next calls
did not read them again, measured on an AMD EPYC Zen 4). `MADV_DONTNEED` on a read-only file mapping drops the
pages from this process; should anything read them again they come back from the file, so
correctness never depends on it. Linux only; elsewhere a no-op.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

MADV_DONTNEED = 4


def release_mapped_file(*paths: str | os.PathLike) -> int:
    """Drop this process's resident pages of read-only mappings of `paths` (a folder: of every file
    under it, as a blob cache); returns bytes advised."""
    if not sys.platform.startswith("linux") or not paths:
        return 0
    targets = [str(Path(path).resolve()) for path in paths]
    folders = tuple(target + os.sep for target in targets)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        with open("/proc/self/maps") as maps:
            lines = maps.readlines()
    except OSError:
        return 0
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    advised = 0
    for line in lines:
        parts = line.split(maxsplit=5)
        mapped = parts[5].strip() if len(parts) == 6 else ""
        if not (mapped in targets or mapped.startswith(folders)) or "w" in parts[1]:
            continue  # other files, and anything writable (its private copies would be lost)
        start, end = (int(v, 16) for v in parts[0].split("-"))
        if libc.madvise(start, end - start, MADV_DONTNEED) == 0:
            advised += end - start
    return advised


def mapping_ranges(path: str | os.PathLike) -> set[tuple[int, int]]:
    """The address ranges where this process maps `path` now (Linux; elsewhere none)."""
    if not sys.platform.startswith("linux"):
        return set()
    target = str(Path(path).resolve())
    try:
        with open("/proc/self/maps") as maps:
            lines = maps.readlines()
    except OSError:
        return set()
    found = set()
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].strip() == target:
            start, end = (int(v, 16) for v in parts[0].split("-"))
            found.add((start, end))
    return found


def release_ranges(ranges: set[tuple[int, int]]) -> int:
    """Drop the resident pages of mappings the caller made itself and never wrote to (a private
    mapping is writable, so `release_mapped_file` leaves those alone: it cannot know). Pages read
    again come back from the file. Returns bytes advised."""
    if not sys.platform.startswith("linux") or not ranges:
        return 0
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:
        return 0
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return sum(end - start for start, end in ranges if libc.madvise(start, end - start, MADV_DONTNEED) == 0)


def mapped_sources(ir_path: str | os.PathLike, blob_dir: str | os.PathLike | None) -> tuple[Path, ...]:
    """What a compiled model leaves mapped, to give back after compiling: its IR's `.bin`, and the
    blob cache it may have been imported from."""
    return (Path(ir_path).with_suffix(".bin"), *([Path(blob_dir)] if blob_dir else []))


def mapped_resident_bytes(*paths: str | os.PathLike) -> int:
    """Resident bytes of this process's mappings of `paths` (folders: every file under them), from
    /proc/self/smaps: what a memory report should name when RSS looks too high. Linux only."""
    if not sys.platform.startswith("linux") or not paths:
        return 0
    targets = [str(Path(path).resolve()) for path in paths]
    folders = tuple(target + os.sep for target in targets)
    resident = 0
    counting = False
    try:
        with open("/proc/self/smaps") as smaps:
            for line in smaps:
                head = line.split(maxsplit=5)
                if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                    mapped = head[5].strip() if len(head) == 6 else ""
                    counting = mapped in targets or mapped.startswith(folders)
                elif counting and line.startswith("Rss:"):
                    resident += int(line.split()[1]) * 1024
    except OSError:
        return 0
    return resident


@contextlib.contextmanager
def periodically(work: Callable[[], object], every_s: float, name: str) -> Iterator[None]:
    """Run `work` every `every_s` seconds in a background thread while inside; the thread has
    stopped when this exits (a page release or a memory sample never outlives its phase)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            work()

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def mapped_file_released(*paths: str | os.PathLike | None, every_s: float = 0.5) -> Iterator[None]:
    """Keep giving back the mapped pages of `paths` (None entries are skipped) while inside (e.g.
    during a compile), and once more at the end. A compile reads every weight once to copy it:
    without this, the whole `.bin` becomes resident on top of the copy for the duration (SD1.5:
    3.4 GB, the Optimize peak)."""
    given = [path for path in paths if path is not None]
    try:
        with periodically(lambda: release_mapped_file(*given), every_s, "sd-ov-release-pages"):
            yield
    finally:
        release_mapped_file(*given)


def trim_heap() -> None:
    """Hand freed heap pages back to the system (glibc keeps them otherwise: torch tensors under
    its mmap threshold, e.g. most of a UNet's biases and norms, come from the heap)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):  # musl and others have no malloc_trim
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)


def rss_mib() -> float:
    """This process's resident memory now, in MiB (the working set on Windows)."""
    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB: Windows' peak working set, the kernel's
    maximum RSS elsewhere (psutil names no peak on Linux; `resource` has none on Windows)."""
    info = psutil.Process().memory_info()
    if hasattr(info, "peak_wset"):
        return info.peak_wset / 2**20
    try:
        import resource
    except ImportError:
        return info.rss / 2**20
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
