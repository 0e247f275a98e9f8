"""A job's plan: what serves this job (or its hires pass), read from the host in one place at its
start and carried out in one place (`serving.JobServing.start_job`).

It holds the job's DeepCache schedule and UNet calls, its UNet LoRAs (for the OpenVINO UNet's
branch), ControlNet's hook (its units' residuals), why torch must make the job's UNet calls where
it must (a LoRA kind the branch can't take, Tiling, a hypernetwork), and what the job asked that
OpenVINO serves without (Hypertile). The readers below are A1111's: its Lora extension's networks,
sd-webui-controlnet's hook, its per-job patches of torch modules; another host reads its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sd_ov import DeepCacheConfig, JobRecord

from . import controlnet
from .lora import UNetLora, unet_lora
from .torch_patches import unet_notes, unet_refusal


@dataclass
class JobPlan:
    deepcache: DeepCacheConfig
    expected_calls: int
    first_pass: bool  # a batch's start; False: its hires pass
    lora: UNetLora
    control_hook: object | None  # sd-webui-controlnet's hook when its units run this job
    torch_reason: str | None  # torch makes the job's UNet calls, and why (None: OpenVINO may)
    notes: list[str] = field(default_factory=list)  # asked of torch, served by OpenVINO without


def plan_job(
    unet: torch.nn.Module | None,
    record: JobRecord,
    deepcache: DeepCacheConfig,
    expected_calls: int,
    first_pass: bool,
    earlier_reason: str | None = None,
) -> JobPlan:
    """The plan of the job the webui is starting on `unet` (its torch UNet); `earlier_reason`: why
    torch made the first pass, which its hires pass keeps (NaN/inf from OpenVINO)."""
    lora = unet_lora(unet) if unet is not None else UNetLora()
    # the Lora extension applies a LoRA in torch's forward, the webui's Tiling in torch's convs:
    # what the compiled UNet can't follow makes the job torch's, never a silently other picture
    reason = lora.why_not or unet_refusal(unet) or (None if first_pass else earlier_reason)
    return JobPlan(
        deepcache,
        expected_calls,
        first_pass,
        lora,
        controlnet.job_hook(unet, record),
        reason,
        unet_notes(hires_pass=not first_pass),
    )
