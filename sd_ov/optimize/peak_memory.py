"""The peak resident memory of one piece of long work (Optimize), and what it was doing then.

The process's own peak (VmHWM, Windows' peak working set) is the whole process's since it began:
inside the webui that is the checkpoint's load or a torch job's VAE decode, not Optimize's (an SDXL
report said 18.9 GiB for work that peaked at 12). A thread samples the resident memory instead,
which works alike on Windows and Linux; a spike shorter than the interval can be missed, so the
figure is a lower bound within one interval's allocations.
"""

from __future__ import annotations

import contextlib
from types import TracebackType

import psutil

from ..progress import ProgressFn
from ..runtime.memory import periodically


class PeakSampler:
    """`with PeakSampler() as peak:` samples this process's RSS every `every_s` seconds; the
    progress function `peak.tagging(progress)` returns names the phase each sample belongs to."""

    def __init__(self, every_s: float = 0.25) -> None:
        self.every_s = every_s
        self.phase = "start"
        self.start_mib = 0.0
        self.peak_mib = 0.0
        self.peak_phase = ""
        self._process = psutil.Process()

    def sample(self) -> float:
        rss = self._process.memory_info().rss / 2**20
        if rss > self.peak_mib:
            self.peak_mib, self.peak_phase = rss, self.phase
        return rss

    def tagging(self, progress: ProgressFn) -> ProgressFn:
        def tagged(message: str, fraction: float) -> None:
            self.sample()  # the phase that ends here gets its last sample
            self.phase = message
            progress(message, fraction)

        return tagged

    def __enter__(self) -> PeakSampler:
        self.start_mib = self.sample()
        self._running = contextlib.ExitStack()
        self._running.enter_context(periodically(self.sample, self.every_s, "sd-ov-peak-memory"))
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._running.close()
        self.sample()
