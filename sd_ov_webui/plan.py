"""A job's plan: what serves this job (or its hires pass), decided in one place at its start and
carried out in one place (`serving.JobServing.start_job`).

The host reads the job (`HostReading`: its UNet LoRAs for the OpenVINO UNet's branch, ControlNet's
hook, why torch must make the job's UNet calls where it must, what it asked that OpenVINO serves
without); the plan adds the job's DeepCache schedule and UNet calls, and why a hires pass keeps
its first pass on torch. Each host has its readers: A1111's in `unet.py` (the Lora extension's
networks, sd-webui-controlnet, the webui's per-job patches of torch modules), Forge's in
`forge.py` (its UnetPatcher's LoRA patches).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sd_ov import DeepCacheConfig

from .lora import UNetLora


@dataclass
class HostReading:
    """What the host says of the job it starts."""

    lora: UNetLora = field(default_factory=UNetLora)
    control_hook: object | None = None  # the host's ControlNet hook when its units run this job
    refusal: str | None = None  # why torch makes the job's UNet calls (Tiling, a hypernetwork, ...)
    notes: list[str] = field(default_factory=list)  # asked of torch, served by OpenVINO without


@dataclass
class JobPlan:
    deepcache: DeepCacheConfig
    expected_calls: int
    first_pass: bool  # a batch's start; False: its hires pass
    lora: UNetLora
    control_hook: object | None
    torch_reason: str | None  # torch makes the job's UNet calls, and why (None: OpenVINO may)
    notes: list[str]


def plan_job(
    reading: HostReading,
    deepcache: DeepCacheConfig,
    expected_calls: int,
    first_pass: bool,
    earlier_reason: str | None = None,
) -> JobPlan:
    """The plan of the job the host is starting; `earlier_reason`: why torch made the first pass,
    which its hires pass keeps (NaN/inf from OpenVINO)."""
    # a LoRA applied in torch's forward, Tiling in torch's convs: what the compiled UNet can't
    # follow makes the job torch's, never a silently other picture
    reason = reading.lora.why_not or reading.refusal or (None if first_pass else earlier_reason)
    return JobPlan(
        deepcache, expected_calls, first_pass, reading.lora, reading.control_hook, reason, reading.notes
    )
