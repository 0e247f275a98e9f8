"""DeepCache (Ma et al., CVPR 2024) for the ldm UNet: reuse the deep features across steps.

The UNet's deep, low-resolution features change slowly between adjacent denoising calls. With
skip branch b, a **full** call runs the whole UNet and also returns the feature entering output
block N-1-b; a **shallow** call runs only input blocks 0..b and output blocks N-1-b..N-1,
taking that cached feature instead of everything below. With a fresh cache the shallow call's
output equals the full call's exactly (same arithmetic on the same tensors).

A schedule decides which denoiser calls are full. It counts calls, not sampler steps (Heun and
DPM2 call the UNet twice per step), and keeps one cache per (shape, prompt) slot, so features
of different shapes or prompts are never mixed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openvino as ov
import torch

from ..constants import DEEPCACHE_FEATURE, SCHEDULES
from ..errors import UnsupportedModelError
from ..progress import ProgressFn
from ..store.unet_spec import UNetSpec
from .export import (
    OUTPUT_NAME,
    check_disk_space,
    convert_module,
    dynamic_shapes,
    example_inputs,
    input_names,
    save_ir,
)
from .ldm_unet import openaimodel_of
from .traceable_unet import ends_with_upsample, join_follows_upsample


def check_branch(unet: torch.nn.Module, branch: int) -> None:
    blocks = len(unet.input_blocks)
    if not 0 <= branch < blocks - 1:
        raise UnsupportedModelError(
            f"DeepCache branch {branch} is out of range: this UNet has 0..{blocks - 2}"
        )


def _embedding(unet: torch.nn.Module, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """The UNet's time embedding, plus SDXL's vector conditioning where the UNet takes one."""
    om = _module(unet)
    emb = unet.time_embed(om.timestep_embedding(timesteps, unet.model_channels, repeat_only=False))
    return emb if y is None else emb + unet.label_emb(y)


def _module(unet: torch.nn.Module):
    module = openaimodel_of(unet)
    if module is None:
        raise UnsupportedModelError(f"DeepCache takes the ldm or sgm UNetModel, not {type(unet).__name__}")
    return module


def _cat(unet: torch.nn.Module):
    """The host's cat of the UNet's own module (ldm or sgm; the webui's handles odd sizes)."""
    return _module(unet).th.cat


class DeepCacheFull(torch.nn.Module):
    """The whole UNet; returns (noise prediction, feature entering output block N-1-branch)."""

    def __init__(self, unet: torch.nn.Module, branch: int) -> None:
        super().__init__()
        check_branch(unet, branch)
        self.unet, self.branch = unet, branch

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, y: torch.Tensor | None = None
    ):
        cat = _cat(self.unet)
        unet, emb = self.unet, _embedding(self.unet, timesteps, y)
        hs, h = [], x
        for module in unet.input_blocks:
            h = module(h, emb, context)
            hs.append(h)
        h = unet.middle_block(h, emb, context)
        first_shallow = len(unet.output_blocks) - 1 - self.branch
        feature = h
        for i, module in enumerate(unet.output_blocks):
            if i == first_shallow:
                feature = h
            h = module(cat([h, hs.pop()], dim=1), emb, context)
        return unet.out(h), feature


class DeepCacheShallow(torch.nn.Module):
    """Input blocks 0..branch and output blocks N-1-branch..N-1 around a cached feature."""

    def __init__(self, unet: torch.nn.Module, branch: int) -> None:
        super().__init__()
        check_branch(unet, branch)
        self.unet, self.branch = unet, branch

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, *rest: torch.Tensor):
        """rest: (feature,), or (y, feature) for a UNet with vector conditioning."""
        cat = _cat(self.unet)
        *y, feature = rest
        unet, emb = self.unet, _embedding(self.unet, timesteps, *y)
        hs, h = [], x
        for module in unet.input_blocks[: self.branch + 1]:
            h = module(h, emb, context)
            hs.append(h)
        h = feature
        first = len(unet.output_blocks) - 1 - self.branch
        if first > 0 and ends_with_upsample(unet, unet.output_blocks[first - 1]):
            join_follows_upsample(unet)  # the feature was upsampled: odd sizes resize at the join
        for module in unet.output_blocks[first:]:
            h = module(cat([h, hs.pop()], dim=1), emb, context)
        return unet.out(h)


@dataclass(frozen=True)
class DeepCacheConfig:
    """A job's caching: interval 0 or 1 means off."""

    interval: int = 0
    branch: int = 0
    schedule: str = "uniform"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, not {self.schedule!r}")
        if self.interval < 0 or self.branch < 0:
            raise ValueError("interval and branch must not be negative")

    @property
    def enabled(self) -> bool:
        return self.interval >= 2

    def label(self) -> str:
        return f"DeepCache{self.interval}b{self.branch}{'nu' if self.schedule != 'uniform' else ''}"

    def infotext(self) -> str:
        return f"interval {self.interval}, branch {self.branch}, {self.schedule}"

    @classmethod
    def from_infotext(cls, text: str) -> DeepCacheConfig:
        parts = dict(p.strip().split(" ", 1) for p in text.split(",")[:2])
        schedule = text.split(",")[2].strip() if text.count(",") >= 2 else "uniform"
        return cls(int(parts["interval"]), int(parts["branch"]), schedule)


@functools.lru_cache(maxsize=32)
def full_call_indices(config: DeepCacheConfig, total_calls: int) -> frozenset[int]:
    """Which calls (0-based, of `total_calls`) run the full UNet.

    uniform: every `interval`-th call. non-uniform: the same number of full calls, denser at
    the start where the picture's layout forms (the paper's non-uniform variant: gaps grow
    quadratically from the first call).
    """
    if not config.enabled or total_calls <= 1:
        return frozenset(range(total_calls))
    if config.schedule == "uniform":
        return frozenset(range(0, total_calls, config.interval))
    count = math.ceil(total_calls / config.interval)
    indices: list[int] = []
    for k in range(count):  # as many full calls as uniform, never two at the same call
        wanted = round((k / count) ** 2 * total_calls)
        indices.append(max(wanted, indices[-1] + 1) if indices else 0)
    return frozenset(min(i, total_calls - 1) for i in indices)


@dataclass
class _Slot:
    calls: int = 0
    feature: torch.Tensor | None = None
    context_sig: tuple[float, ...] = ()


@dataclass
class DeepCacheState:
    """Per-job call counting and feature cache, one slot per (shape, prompt)."""

    config: DeepCacheConfig
    expected_calls: int = 0  # for the non-uniform schedule; 0: unknown, uniform is used
    slots: dict[Any, _Slot] = field(default_factory=dict)
    full_calls: int = 0
    shallow_calls: int = 0

    def reset(self, expected_calls: int | None = None) -> None:
        """At every job, hires pass and batch: nothing carries over."""
        self.slots.clear()
        if expected_calls is not None:
            self.expected_calls = expected_calls

    @staticmethod
    def signature(context: torch.Tensor) -> tuple[float, ...]:
        """A cheap fingerprint of the prompt embedding: prompt editing changes it mid-job."""
        flat = context.detach().reshape(-1).float()
        idx = torch.linspace(0, flat.numel() - 1, 16).long()
        return (float(flat.sum()), *flat[idx].tolist())

    def plan(self, x: torch.Tensor, context: torch.Tensor) -> tuple[_Slot, bool]:
        """(slot, full?) for this call; a changed prompt in a slot forces a full call."""
        key = (tuple(x.shape), tuple(context.shape))
        slot = self.slots.setdefault(key, _Slot())
        sig = self.signature(context)
        n = slot.calls
        slot.calls += 1
        if slot.feature is None or sig != slot.context_sig:
            slot.context_sig = sig
            return slot, True
        if self.config.schedule == "non-uniform" and n < self.expected_calls:
            full = n in full_call_indices(self.config, self.expected_calls)
        else:
            full = n % max(self.config.interval, 1) == 0
        return slot, full


class DeepCacheUNet:
    """Calls a full and a shallow UNet by the schedule; each is `fn(x, t, c[, y][, feature])`."""

    def __init__(self, full, shallow, config: DeepCacheConfig, branch: int | None = None) -> None:
        self.full, self.shallow = full, shallow
        self.branch = config.branch if branch is None else branch
        self.state = DeepCacheState(config)
        self.pattern: list[str] = []  # "F"/"S" per call, for tests and reports

    def start(self, config: DeepCacheConfig, expected_calls: int = 0) -> None:
        """A new job, hires pass or batch: new schedule, no cached feature carries over."""
        self.state.config = config
        self.state.reset(expected_calls)
        self.pattern.clear()

    def release(self) -> None:
        for model in (self.full, self.shallow):
            if hasattr(model, "release"):
                model.release()

    def __call__(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        *y: torch.Tensor,
        control: Sequence[torch.Tensor] = (),
    ) -> torch.Tensor:
        """control: ControlNet's residuals of this call (one per input block, then the middle
        block's), for models opened with their inputs. A full call takes them all; a shallow one
        those of its own input blocks 0..branch (the cached feature holds the rest, as of the last
        full call): the control model runs every call, since reusing the full call's residuals on
        shallow calls lost 1.4-1.9 dB more (bench/controlnet_deepcache.py)."""
        slot, full = self.state.plan(x, context)
        if full or not self.state.config.enabled:
            out, slot.feature = self.full(x, timesteps, context, *y, *control)
            self.state.full_calls += 1
            self.pattern.append("F")
            return out
        self.state.shallow_calls += 1
        self.pattern.append("S")
        return self.shallow(x, timesteps, context, *y, slot.feature, *control[: self.branch + 1])


def shallow_parameters(unet: torch.nn.Module, branch: int) -> int:
    """The shallow model's share of the UNet's weights (its blocks, the embeddings, the output
    head): what its IR adds on disk beside the full model's. At branch 0 that is about 1 % of SDXL's
    UNet, so the pair needs one UNet's space, not two (a 16 GB laptop's disk is often short)."""
    first = len(unet.output_blocks) - 1 - branch
    modules = [*unet.input_blocks[: branch + 1], *unet.output_blocks[first:], unet.out, unet.time_embed]
    modules += [unet.label_emb] if hasattr(unet, "label_emb") else []
    return sum(p.numel() for m in modules for p in m.parameters())


FULL_IR = "unet_full.xml"
SHALLOW_IR = "unet_shallow.xml"


def export_deepcache(
    unet: torch.nn.Module, spec: UNetSpec, folder: Path, branch: int, progress: ProgressFn
) -> tuple[dict[str, str], int]:
    """Write the full and the shallow IR of `unet` for `branch` into `folder`; returns the IR
    file of each model and the cached feature's channel count."""
    check_disk_space(folder, (spec.parameters + shallow_parameters(unet, branch)) * 4)
    full, shallow = DeepCacheFull(unet, branch), DeepCacheShallow(unet, branch)
    example = example_inputs(spec)
    with torch.no_grad():
        _, feature = full(*example)
    feature_shape = ov.PartialShape([-1, int(feature.shape[1]), -1, -1])
    progress(f"tracing the full UNet (DeepCache branch {branch})", 0.0)
    names = input_names(spec)
    model = convert_module(full, unet, example, names, (OUTPUT_NAME, DEEPCACHE_FEATURE), dynamic_shapes(spec))
    progress("saving the full IR", 0.4)
    save_ir(model, folder / FULL_IR)
    del model
    progress(f"tracing the shallow UNet (DeepCache branch {branch})", 0.5)
    shapes = {**dynamic_shapes(spec), DEEPCACHE_FEATURE: feature_shape}
    model = convert_module(
        shallow, unet, (*example, feature), (*names, DEEPCACHE_FEATURE), (OUTPUT_NAME,), shapes
    )
    progress("saving the shallow IR", 0.9)
    save_ir(model, folder / SHALLOW_IR)
    progress("saved", 1.0)
    return {"full": FULL_IR, "shallow": SHALLOW_IR}, int(feature.shape[1])
