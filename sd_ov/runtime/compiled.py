"""What every compiled model part shares (the UNet, the VAE, the text encoder; next the control
model): the Core, the device, the compile properties, the blob cache, compiling with progress and
with the IR's mapped pages given back, and the two ways to give memory back.

Why one base: each part compiled lazily, released its mapped pages and dropped its models in its
own words; a fix to one (a property, a progress line, a page release) missed the others. A part
names its IR files and how it builds a model from them; the rest is here.
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

import openvino as ov

from ..progress import ProgressFn, silent
from .memory import mapped_file_released, mapped_sources
from .ov_core import compile_properties, get_core, resolve_device

if TYPE_CHECKING:
    from ..store.cache import CacheEntry

log = logging.getLogger("sd_ov")


class CompiledPart:
    """Compiled models of one part on one device, compiled at first use. Subclasses say `what`
    they are and list the compiled models they hold (`compiled_models`), and drop them in
    `drop_compiled`."""

    what = "model"

    def __init__(
        self,
        device: str = "CPU",
        precision: str = "f32",
        blob_dir: str | Path | None = None,
        progress: ProgressFn = silent,
    ) -> None:
        self.core = get_core()
        self.device = resolve_device(device)
        self.precision = precision
        self.blob_dir = Path(blob_dir) if blob_dir is not None else None
        self.properties = compile_properties(self.device, precision, blob_dir)
        self.progress = progress
        self.timings: dict[str, float] = {}

    def compile(self, model: ov.Model | Path, ir: Path, name: str = "") -> ov.CompiledModel:
        """Compile `model` (the IR at `ir`, or a graph made from it) with the part's properties;
        `name` says which (e.g. "UNet for dynamic shapes", "VAE decoder"; default: `what`).
        While compiling, the IR's `.bin` and the blob cache are read once and copied: their pages
        are given back as they are read (`memory.mapped_file_released`)."""
        name = name or self.what
        self.progress(f"compiling the OpenVINO {name} on {self.device}", 0.0)
        started = time.perf_counter()
        source = str(model) if isinstance(model, Path) else model
        with mapped_file_released(*mapped_sources(ir, self.blob_dir)):
            compiled = self.core.compile_model(source, self.device, self.properties)
        seconds = self.timings[name] = time.perf_counter() - started
        self.progress(f"compiled the OpenVINO {name} in {seconds:.1f} s", 1.0)
        return compiled

    def pages_given_back(self, ir: Path) -> AbstractContextManager[None]:
        """Around a first call (of a shape): the CPU plugin repacks the weights it reads from the
        mapped IR or blob then, and the pages it read go back as it reads them, not after. SDXL's
        INT8 UNet at 1024² (AMD EPYC Zen 4): the first call peaked at 6.71 GiB with the pages given
        back after it, RSS 4.2 after; runtime.py says why the pages may go."""
        return mapped_file_released(*mapped_sources(ir, self.blob_dir))

    def compiled_models(self) -> list[ov.CompiledModel]:
        return []

    def release_memory(self) -> int:
        """Give back the compiled models' intermediate buffers and keep the models: the next call
        allocates them again, but compiles nothing. Returns how many models released memory; a
        plugin that does not implement it (OpenVINO documents it for CPU and NPU) keeps its
        buffers, which costs memory, never the job."""
        released = 0
        for model in self.compiled_models():
            try:
                model.release_memory()
                released += 1
            except Exception as err:  # e.g. "Not implemented" from a GPU plugin
                log.info("sd-ov: the %s on %s keeps its buffers: %s", self.what, self.device, err)
        return released

    def drop_compiled(self) -> None:
        """Free the compiled models (their weights too); the next call compiles again."""

    def release(self) -> None:
        self.drop_compiled()


class EntryPart(CompiledPart):
    """A part served from one cache entry of its own (the VAE, a text encoder, a control model):
    its compiled blobs go into that entry's folder unless the user keeps none (`cache_compiled`)."""

    def __init__(
        self,
        entry: CacheEntry,
        device: str = "CPU",
        precision: str = "f32",
        cache_compiled: bool = True,
        progress: ProgressFn = silent,
    ) -> None:
        super().__init__(device, precision, entry.blob_dir if cache_compiled else None, progress)
        self.entry = entry
        self._opened()

    def _opened(self) -> None:
        """What a subclass holds besides its entry (names of IRs, slots for compiled models)."""
