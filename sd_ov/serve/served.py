"""The OpenVINO UNet a host serves: one object that owns the forward dispatch (plain model, or
DeepCache's full and shallow models), switching DeepCache per job, reopening when the runtime
settings change, and giving memory back.

A host (the webui adapter, the demo) only calls it, or falls back to torch when it raises. It
never reaches into the runtime or the DeepCache models itself.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Mapping, Sequence

import torch

from ..errors import NonFiniteOutputError, SdOvError, UnsupportedCallError
from ..graphs.deepcache import DeepCacheConfig, DeepCacheUNet
from ..graphs.lora_branch import LoraLayer, UnsupportedLoraError
from ..progress import ProgressFn, silent
from ..runtime.memory import trim_heap
from ..runtime.settings import RuntimeSettings, run_summary
from ..runtime.unet import OVUNet
from ..store import cache
from ..store.recipe import Recipe
from . import engine
from .preset import PRESETS, recipe_schedule
from .unet_source import UNetSource

log = logging.getLogger("sd_ov")


class ServedUNet:
    """Call it like the torch UNet: `served(x, timesteps, context)`. Every method may raise; the
    host then serves torch and says why."""

    def __init__(
        self, source: UNetSource, recipe: Recipe, settings: RuntimeSettings, progress: ProgressFn = silent
    ) -> None:
        self.source = source
        self.recipe = recipe
        self.settings = settings.for_recipe(recipe)
        self.progress = progress
        self.entry: cache.CacheEntry | None = None
        self.plain: OVUNet | None = None
        self.deepcache: DeepCacheUNet | None = None
        self.job_deepcache = DeepCacheConfig()
        self.lora: dict[str, LoraLayer] = {}
        # The branch costs memory (+0.31 GiB for SD1.5 at 512², bench/lora.py), so the graph
        # gets it at the first LoRA, then keeps it, so later switches recompile nothing.
        self.with_branch = False
        # ControlNet's residuals as inputs of the models (control_inputs.py): set per job by
        # `set_control`; DeepCache's pair takes them too.
        self.with_control = False

    def open(self) -> None:
        """Find (or export) the entry and read it for the device; compiles come with the first call."""
        self.entry = self.source.entry(self.recipe, self.progress)
        self._open_plain()

    def _open_plain(self) -> None:
        self.plain = engine.open_unet(
            self.entry,
            progress=self.progress,
            lora=self.with_branch,
            control=self.with_control,
            **self.settings.open_kwargs(),
        )
        self._reapply_lora()

    def set_lora(self, layers: Mapping[str, LoraLayer]) -> None:
        """The LoRA updates (by torch layer path) of the next calls, on whichever models serve
        them; empty: none. The first LoRA reopens the models with the branch (one compile; call
        this before `start_job`, which then opens DeepCache's with it too). Raises
        UnsupportedLoraError (the job is then torch's)."""
        if layers and not self.with_branch and self.settings.lora:
            self.progress("adding the LoRA branch to the OpenVINO UNet (compiled once)", 0.0)
            self.release()
            self.with_branch = True
            if self.entry is None:
                self.open()
            else:  # the entry found before: no lookup (which would read torch's weights back)
                self._open_plain()
        self.lora = dict(layers)
        self._apply_lora()

    def set_control(self, on: bool) -> None:
        """Open the plain model with ControlNet's residual inputs (a ControlNet job), or with the
        IR's graph again (a job without): a switch reopens the model, one compile (and drops
        DeepCache's pair: `start_job` opens it again with or without the inputs)."""
        if on == self.with_control and (self.loaded or not on):
            return
        what = "with ControlNet's residual inputs" if on else "without ControlNet's inputs"
        self.progress(f"opening the OpenVINO UNet {what} (compiled once)", 0.0)
        self.release()
        self.with_control = on
        try:
            if self.entry is None:
                self.open()
            else:  # the entry found before: no lookup
                self._open_plain()
        except Exception:
            if not on:
                raise
            self.with_control = False  # the plain model serves the jobs without ControlNet
            if self.entry is not None:
                self._open_plain()
            raise

    def _reapply_lora(self) -> None:
        """On models opened anew, the set of the last `set_lora`; none if they can't take it (the
        host's next `set_lora` says why)."""
        try:
            self._apply_lora()
        except UnsupportedLoraError:
            self.lora = {}
            self._apply_lora()

    def _apply_lora(self) -> None:
        if self.plain is not None:
            self.plain.set_lora(self.lora)
        if self.deepcache is not None:
            self.deepcache.full.set_lora(self.lora)
            self.deepcache.shallow.set_lora(self.lora, every_layer=False)  # it holds the outer blocks only

    @property
    def loaded(self) -> bool:
        return self.plain is not None or self.deepcache is not None

    def configure(self, settings: RuntimeSettings) -> bool:
        """Apply the settings of this job (a per-job override, or Settings → Apply); True if the
        models were reopened."""
        wanted = settings.for_recipe(self.recipe)
        if wanted == self.settings and self.loaded:
            return False
        self.release()
        self.settings = wanted
        self.with_branch = self.with_branch and wanted.lora
        self.open()
        return True

    def start_job(self, config: DeepCacheConfig, expected_calls: int) -> str | None:
        """Before each batch and hires pass: this job's caching, counters reset. Returns why
        DeepCache does not run when it was asked for (the job then runs on the plain model)."""
        self.job_deepcache = DeepCacheConfig()
        if not config.enabled:
            if self.deepcache is not None:
                self.deepcache.start(config)
            return None
        try:
            if self.deepcache is None or self.deepcache.branch != config.branch:
                # Found (or exported) first: a pair that isn't there leaves the models as they are.
                entry = self.source.entry(self.recipe.with_deepcache(config.branch), self.progress)
                if self.deepcache is not None:
                    self.deepcache.release()  # another branch: its models go before the new ones come
                    self.deepcache = None
                if self.plain is not None:  # the full model serves plain calls too: one copy in memory
                    self.plain.release()
                    self.plain = None
                    gc.collect()
                self.deepcache = engine.open_deepcache(
                    entry,
                    config,
                    progress=self.progress,
                    lora=self.with_branch,
                    control=self.with_control,
                    **self.settings.open_kwargs(),
                )
                self._reapply_lora()
            self.deepcache.start(config, expected_calls)
        except Exception as err:
            if not self.loaded:  # the pair failed to open after the plain model went
                self._open_plain()
            log.warning("sd-ov: DeepCache unavailable: %s", err)
            return f"DeepCache off: {err}"
        self.job_deepcache = config
        return None

    def __call__(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        *y: torch.Tensor,
        control: Sequence[torch.Tensor] = (),
    ) -> torch.Tensor:
        """y: SDXL's vector conditioning, for an entry whose UNet takes it (`takes_y`); control:
        ControlNet's residuals (one per input block, then the middle block's), after
        `set_control(True)`."""
        if self.with_control != bool(control):
            raise UnsupportedCallError(
                "the OpenVINO UNet is open for ControlNet's residuals and this call has none"
                if self.with_control
                else "ControlNet's residuals came, but the OpenVINO UNet was opened without their inputs"
            )
        if self.deepcache is not None and self.job_deepcache.enabled:
            out = self.deepcache(x, timesteps, context, *y, control=control)
        elif self.deepcache is not None:  # same weights and output as the plain model
            out = self.deepcache.full(x, timesteps, context, *y, *control)[0]
        elif self.plain is not None:
            out = self.plain(x, timesteps, context, *y, *control)
        else:
            raise SdOvError("the OpenVINO UNet was released")
        if not bool(torch.isfinite(out).all()):
            inputs = (("x", x), ("context", context), *(("y", v) for v in y))
            inputs += tuple(("ControlNet's residuals", v) for v in control)
            bad = list(dict.fromkeys(name for name, t in inputs if not bool(torch.isfinite(t).all())))
            if bad:  # not the UNet's doing: torch would get the same inputs
                raise NonFiniteOutputError(f"the UNet's input {' and '.join(bad)} already had NaN/inf")
            raise NonFiniteOutputError(
                f"the OpenVINO UNet returned NaN/inf on {self.settings.device} at {self.settings.precision} "
                "precision (f32 avoids this)"
            )
        return out

    @property
    def takes_y(self) -> bool:
        """Whether the UNet takes a vector conditioning `y` (SDXL)."""
        return self.entry is not None and bool(self.entry.manifest.unet.adm_channels)

    def recipe_deepcache(self) -> DeepCacheConfig:
        """The DeepCache schedule this recipe runs best with (`preset.recipe_schedule`)."""
        return recipe_schedule(self.entry.manifest if self.entry is not None else None)

    def preset_of_job(self) -> str:
        """The preset that made this recipe, when the job also runs its DeepCache schedule."""
        made = PRESETS.get(self.entry.manifest.preset) if self.entry is not None else None
        return made.name if made is not None and self.job_deepcache == made.deepcache else ""

    def summary(self) -> str:
        """What this job runs (set by `configure` and `start_job`, so fixed within a job)."""
        return run_summary(self.recipe, self.settings, self.job_deepcache)

    def _models(self) -> list:
        return [self.plain] + ([self.deepcache.full, self.deepcache.shallow] if self.deepcache else [])

    def drop_compiled(self) -> None:
        """The compiled models go, the graphs stay: the next call compiles again (from the blob
        cache when it is on). Between jobs in `lowvram`, so the UNet is resident only while it samples."""
        for model in self._models():
            if model is not None and hasattr(model, "drop_compiled"):
                model.drop_compiled()
        gc.collect()
        trim_heap()

    def split_batches(self, max_batch: int) -> None:
        """Calls of more than `max_batch` rows run as several (0: never): `lowvram` runs cond and
        uncond one at a time, so one call's activations are in memory (`OVUNet.max_batch`)."""
        for model in self._models():
            if model is not None:
                model.max_batch = max_batch

    def release_memory(self) -> None:
        """The compiled models' intermediate buffers go back, the models stay: the next job compiles
        nothing (`CompiledPart.release_memory`). Between jobs in `release`."""
        for model in self._models():
            if model is not None and hasattr(model, "release_memory"):
                model.release_memory()
        trim_heap()

    def release(self) -> None:
        """Compiled models and graphs go; memory returns to the system. Safe to call twice."""
        if self.deepcache is not None:
            self.deepcache.release()
            self.deepcache = None
        if self.plain is not None:
            self.plain.release()
            self.plain = None
        self.job_deepcache = DeepCacheConfig()
        gc.collect()
