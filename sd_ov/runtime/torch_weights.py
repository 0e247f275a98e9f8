"""Free a torch module's weights while OpenVINO serves it, and put the same bytes back later.

Why free and not move: on a CPU-only machine `module.to("cpu")` frees nothing, and the torch
UNet (3.4 GB for SD1.5 in f32) beside OpenVINO's compiled copy is what made the webui heavier
than torch alone. The storages are resized to zero in place, as PyTorch's FSDP does between
uses: every Parameter keeps its identity, shape, dtype and device (hooks, the webui's
references and `state_dict()` keys stay valid), only the bytes go.

Where the bytes come back from: the checkpoint file, read tensor by tensor (a safetensors file
through `safe_open`, a pickle through `torch.load(mmap=True)`), so restoring never holds a
second copy. Before freeing, every tensor is compared with the file's, cast the way the module
holds it; if any differs (weights changed in memory, a cast the file cannot reproduce) nothing
is freed and the caller is told why. So a restore gives back exactly what was freed, or refuses.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import SdOvError
from ..progress import ProgressFn, silent
from .memory import mapping_ranges, release_ranges, trim_heap

# Both readers map the file: every page read stays resident (counted in the process's RSS) until
# the mapping closes. Checking SDXL's UNet against its checkpoint thus added the whole 10 GB of
# file pages on top of the 10 GB UNet (the webui's peak of 20.2 GiB). The pages read so far are
# given back after every this many bytes (`memory.release_ranges`, on the reader's own mapping
# only: the tensors it hands out are compared or copied, never written; Linux, elsewhere the OS
# trims them under pressure), which bounds the file's part of the peak to about this much.
RELEASE_PAGES_EVERY_BYTES = 256 * 2**20


class WeightsNotReleasable(SdOvError):
    """The module's weights cannot be freed safely (they differ from the file, or are shared)."""


class WeightsRestoreError(SdOvError):
    """The freed weights could not be put back (the checkpoint file changed or went away)."""


@dataclass(frozen=True)
class CheckpointTensors:
    """A module's tensors inside a checkpoint file, under a key prefix
    (`model.diffusion_model.` for a Stable Diffusion UNet)."""

    path: Path
    prefix: str

    def stamp(self) -> tuple[int, int]:
        """(size, mtime) of the file: a restore refuses a file changed since the release."""
        st = os.stat(self.path)
        return st.st_size, st.st_mtime_ns

    @contextlib.contextmanager
    def reader(self) -> Iterator[Callable[[str], torch.Tensor]]:
        """A function name → tensor for the module's own names, one tensor read at a time, the
        file's mapped pages given back as it goes (RELEASE_PAGES_EVERY_BYTES)."""
        read_since = 0
        before = mapping_ranges(self.path)  # someone else's mappings of the file are not ours to drop
        with self._reader() as read:
            ours: set[tuple[int, int]] | None = None

            def paced(name: str) -> torch.Tensor:
                nonlocal read_since, ours
                tensor = read(name)
                if ours is None:
                    ours = mapping_ranges(self.path) - before
                read_since += tensor.numel() * tensor.element_size()
                if read_since >= RELEASE_PAGES_EVERY_BYTES:
                    release_ranges(ours)
                    read_since = 0
                return tensor

            try:
                yield paced
            finally:
                release_ranges(ours or set())

    @contextlib.contextmanager
    def _reader(self) -> Iterator[Callable[[str], torch.Tensor]]:
        if self.path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(self.path), framework="pt", device="cpu") as f:
                keys = set(f.keys())

                def get(name: str) -> torch.Tensor:
                    key = self.prefix + name
                    if key not in keys:
                        raise KeyError(f"{key} is not in {self.path.name}")
                    return f.get_tensor(key)

                yield get
            return
        loaded = torch.load(self.path, map_location="cpu", mmap=True, weights_only=True)
        state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded

        def get_loaded(name: str) -> torch.Tensor:
            key = self.prefix + name
            if key not in state:
                raise KeyError(f"{key} is not in {self.path.name}")
            return state[key]

        yield get_loaded  # the mapping goes with `loaded` when the caller is done


def _owned_storage(tensor: torch.Tensor) -> bool:
    """True when the tensor is the whole of its storage: freeing it touches no other tensor."""
    storage = tensor.untyped_storage()
    return tensor.storage_offset() == 0 and storage.nbytes() == tensor.numel() * tensor.element_size()


class ReleasedWeights:
    """The freed parameters of one module; `restore()` puts them back bit-exactly."""

    def __init__(
        self, module: torch.nn.Module, source: CheckpointTensors, names: list[str], what: str = "torch UNet"
    ) -> None:
        self.module = module
        self.what = what
        self.source = source
        self.names = names
        self.stamp = source.stamp()
        self.freed_bytes = sum(self._param(n).numel() * self._param(n).element_size() for n in names)
        self.restored = False

    def _param(self, name: str) -> torch.Tensor:
        return self.module.get_parameter(name)

    @classmethod
    def release(
        cls,
        module: torch.nn.Module,
        source: CheckpointTensors,
        progress: ProgressFn = silent,
        what: str = "torch UNet",
    ) -> ReleasedWeights:
        """Free `module`'s parameters after checking each against `source`; raises
        WeightsNotReleasable (and frees nothing) when one differs or shares its storage."""
        params = [(n, p) for n, p in module.named_parameters() if p.numel() > 0]
        shared = [n for n, p in params if not _owned_storage(p)]
        if shared:
            raise WeightsNotReleasable(
                f"{len(shared)} weights share storage (e.g. {shared[0]}); kept in memory"
            )
        progress(f"checking the {what} against {source.path.name} before freeing it", 0.0)
        try:
            with source.reader() as read:
                for name, param in params:
                    stored = read(name)
                    if stored.shape != param.shape or not torch.equal(
                        stored.to(param.dtype), param.detach().to("cpu")
                    ):
                        raise WeightsNotReleasable(
                            f"{name} differs from {source.path.name} (changed in memory); kept in memory"
                        )
        except (OSError, KeyError, RuntimeError) as err:
            raise WeightsNotReleasable(f"cannot check against {source.path.name}: {err}") from err
        released = cls(module, source, [n for n, _ in params], what)
        for _, param in params:
            if not param.untyped_storage().resizable():  # e.g. a tensor over a mapped file or numpy
                param.data = torch.empty_like(param)  # not touched, so no pages: only resizable
            param.untyped_storage().resize_(0)
        gc.collect()
        trim_heap()
        return released

    def restore(self, progress: ProgressFn = silent) -> None:
        """Read the freed weights back from the file into the same Parameters. Safe to call twice."""
        if self.restored:
            return
        if self.source.stamp() != self.stamp:
            raise WeightsRestoreError(
                f"{self.source.path.name} changed since its weights were freed: reload the checkpoint"
            )
        progress(f"reading the {self.what} back from {self.source.path.name}", 0.0)
        try:
            with self.source.reader() as read, torch.no_grad():
                for name in self.names:
                    param = self._param(name)
                    param.untyped_storage().resize_(param.numel() * param.element_size())
                    # a host that loads its model under inference mode (Forge) holds inference
                    # tensors: their in-place update is allowed only inside that mode
                    with torch.inference_mode() if param.is_inference() else contextlib.nullcontext():
                        param.copy_(read(name))
        except (OSError, KeyError, RuntimeError) as err:
            raise WeightsRestoreError(f"cannot read {self.source.path.name}: {err}") from err
        self.restored = True


# What reads or writes a module's whole state: `state_dict` (called by a parent's too) and
# `_load_from_state_dict` (a parent's `load_state_dict` calls it before its children's).
GUARDED = ("state_dict", "_load_from_state_dict")


class ModuleWeights:
    """One torch module's weights and the file they came from: freed while something else serves
    the module, read back before torch needs it. A refused release is remembered (`kept_because`)
    so the file is not re-read at every job."""

    def __init__(self, module: torch.nn.Module, source: CheckpointTensors, what: str = "torch UNet") -> None:
        self.module = module
        self.source = source
        self.what = what
        self.released: ReleasedWeights | None = None
        self.kept_because: str | None = None

    @property
    def resident(self) -> bool:
        return self.released is None

    def refuse(self) -> str | None:
        """Why the weights must stay (a host's own reasons); None lets `release` go on."""
        return None

    def prepare_release(self) -> None:
        """Runs just before the check against the file (a host undoes its own in-place edits)."""

    def release(self, progress: ProgressFn = silent) -> bool:
        """Free the weights; False when they must stay (see `kept_because`)."""
        if self.released is not None:
            return True
        if self.kept_because is not None:
            return False
        self.kept_because = self.refuse()
        if self.kept_because is None:
            try:
                self.prepare_release()
                self.released = ReleasedWeights.release(self.module, self.source, progress, self.what)
                self._guard(progress)
                return True
            except (WeightsNotReleasable, OSError) as err:
                self.kept_because = str(err)
        return False

    def ensure(self, progress: ProgressFn = silent) -> None:
        """The weights in memory again (a no-op when they are); raises WeightsRestoreError."""
        if self.released is None:
            return
        self.released.restore(progress)
        self.released = None
        for name in GUARDED:
            vars(self.module).pop(name, None)

    def _guard(self, progress: ProgressFn) -> None:
        """While freed, code that reads or loads the module's state (a host saving a copy of it,
        loading other weights into it, a parent's `state_dict()`) gets the weights back first,
        never the empty storages."""
        for name in GUARDED:
            method = getattr(self.module, name)

            def guarded(*args, _method=method, **kwargs):
                self.ensure(progress)
                return _method(*args, **kwargs)

            setattr(self.module, name, guarded)


def is_released(module: torch.nn.Module) -> bool:
    """True when any parameter of `module` has no bytes (freed by `ReleasedWeights`)."""
    return any(p.numel() > 0 and p.untyped_storage().nbytes() == 0 for p in module.parameters())
