"""Serving a job on the OpenVINO UNet, whatever the host: open it (again after a failure, once per
job), carry out the job's plan (`plan.py`), serve each UNet call or hand it to torch with its
reason, give memory back between phases, and fall back for one job only.

`JobServing` is the host-neutral half of the SD Unet: a host's class adds how it finds the loaded
checkpoint and its torch UNet (`open_again`), how torch computes a call, and how it is activated
(`unet.OpenVINOUnet` for AUTOMATIC1111's `modules.sd_unet`).
"""

from __future__ import annotations

import logging

from modules import devices, shared

from sd_ov import (
    DeepCacheConfig,
    JobRecord,
    Recipe,
    RuntimeSettings,
    ServedUNet,
    UNetSource,
    UnsupportedLoraError,
)

from . import controlnet
from .calls import UNetCalls
from .companions import Companions
from .control_model import ControlModels
from .errors import explain, tell_console, unexpected
from .lora import UNetLora
from .offload import WebuiWeights
from .plan import HostReading, plan_job
from .progress import cancellable_progress, webui_progress
from .settings import offload_mode, runtime_settings
from .torch_unet import foreign_forward

log = logging.getLogger("sd_ov")


class JobServing(UNetCalls):
    """The OpenVINO side of the SD Unet: its state lives across jobs, its record per job."""

    recipe: Recipe  # the host's option says which recipe serves

    def open_again(self) -> None:
        """Bind to the loaded checkpoint and open its OpenVINO UNet (the host's)."""
        raise NotImplementedError

    def read_job(self, unet, first_pass: bool) -> HostReading:
        """What the host says of the job it starts (its LoRAs, ControlNet, refusals)."""
        raise NotImplementedError

    def __init__(self) -> None:
        self.source: UNetSource | None = None  # the loaded checkpoint's torch UNet and cache entries
        self.served: ServedUNet | None = None
        self.unavailable: str | None = None  # why OpenVINO serves nothing now
        self.unsupported: str | None = None  # the engine refuses this model: torch, not retried
        self.said: tuple[str | None, int] = (None, 0)  # the last failure said, and how often
        self.opened_for_job = False  # the host's activation opened it for the job that activated it
        self.binding_note: str | None = None  # the option was chosen for another checkpoint
        self.job_torch_reason: str | None = None  # torch serves the rest of this job, and why
        self.weights: WebuiWeights | None = None  # freed while OpenVINO serves (Settings → memory)
        self.companions = Companions()  # the VAE and text encoder on OpenVINO (Settings)
        self.sampled = False  # this job's first UNet call has come
        self.controlnet_job = False  # this job's ControlNet units are served (controlnet.py)
        self.control_models = ControlModels()  # their control models on OpenVINO (Settings)
        self.record = JobRecord()

    @property
    def vae(self):
        return self.companions.vae

    @property
    def text_encoder(self):
        return self.companions.text_encoder

    def begin_job(self) -> None:
        """A job starts (before the webui's `p.init`): after an earlier job's failure, open again
        once, unless this job's activation just tried."""
        if not self.opened_for_job:
            self.apply_settings(may_open=True)
        self.opened_for_job = False

    def offload(self) -> None:
        """While OpenVINO serves: free the torch UNet's weights, or bring them back, as set."""
        if self.weights is None:
            return
        torch_needed = self.job_torch_reason is not None or (  # this job is torch's (a LoRA), or
            self.source is not None
            and foreign_forward(self.source.unet)  # an extension calls torch itself
            and not self.controlnet_job  # (unless it is ControlNet's forward, served by us)
        )
        if self.served is None or offload_mode() == "none" or torch_needed:
            self.weights.ensure(webui_progress)
            return
        try:  # freeing is a saving, never a reason to leave OpenVINO: the weights then stay
            self.weights.release(webui_progress)
        except Exception as err:
            log.warning("sd-ov: the torch UNet's weights stay in memory: %s", err, exc_info=unexpected(err))

    def open(self, settings: RuntimeSettings) -> None:
        served = ServedUNet(self.source, self.recipe, settings, cancellable_progress)
        served.open()
        self.served, self.unavailable = served, None

    def use_torch(self, err: BaseException) -> None:
        """OpenVINO can't serve: give back what it holds (the UNet, its companions and control
        models), say why, and let torch make this job; the next job opens again."""
        self.unavailable = explain(err)
        if unexpected(err):  # the user's next step: nothing but the next job
            self.unavailable += "; the next job tries again"
        self.release()
        self.companions.drop()
        self.control_models.release()
        self.said = tell_console(self.said, self.unavailable, err)
        shared.state.textinfo = f"OpenVINO unavailable, using torch: {self.unavailable}"
        if self.weights is not None:
            self.weights.ensure(webui_progress)
        if self.source is not None:
            self.source.unet.to(devices.device)  # apply_unet moved it to the CPU for us

    def prepare_companions(self) -> list[str] | None:
        """The job's VAE and text encoders, before the webui's `p.init` encodes img2img's pictures
        (job.before_init): their notes, or None while no OpenVINO UNet is open (the batch's
        `start_job` prepares them if its own open succeeds; until then torch's VAE and text
        encoders serve, as in a job torch makes)."""
        if self.served is None:
            self.companions.drop()
            return None
        notes: list[str] = []
        self.companions.start_job(self.source, notes.append)
        return notes

    def start_job(
        self,
        deepcache: DeepCacheConfig | None,
        expected_calls: int,
        first_pass: bool = True,
        companion_notes: list[str] | None = None,
    ) -> None:
        """At each batch (first_pass) and hires pass: a fresh record, the job's plan made and
        carried out; the companions as `prepare_companions` left them (its notes given), or
        prepared now. `deepcache` None: the recipe's own schedule (`recipe_deepcache`)."""
        unet = self.source.unet if self.source is not None else None
        self.recipe_schedule = (
            self.served.recipe_deepcache() if self.served is not None else DeepCacheConfig()
        )
        self.schedule_is_recipes = deepcache is None
        if deepcache is None:
            deepcache = self.recipe_schedule
        if first_pass:
            self.record = JobRecord()
            self.control_models.start_job()
            if self.binding_note:
                self.record.note(self.binding_note)
        reading = self.read_job(unet, first_pass)
        plan = plan_job(reading, deepcache, expected_calls, first_pass, self.job_torch_reason)
        # provisional until serve_units says: apply_settings' offload must not read the torch UNet
        # back for ControlNet's forward (3.2 GB read and checked again at every ControlNet job)
        self.controlnet_job = plan.control_hook is not None
        self.job_torch_reason = plan.torch_reason
        self.apply_settings(may_open=False)  # a per-job override_settings takes effect here
        if self.served is None:
            self.record.unavailable = self.record.unavailable or self.unavailable
            return
        try:  # a reopen here (the first LoRA, a ControlNet switch) may be interrupted: torch serves
            if not plan.lora.why_not:
                self.serve_lora(plan.lora)  # first: the first LoRA reopens the models with the branch
            # before start_job too: DeepCache opens its pair with or without ControlNet's inputs
            self.controlnet_job = self.serve_control(plan.control_hook)
            why_not = self.served.start_job(plan.deepcache, plan.expected_calls)
        except Exception as err:
            self.use_torch(err)
            self.record.unavailable = self.unavailable
            return
        for note in (why_not, self.served.settings.precision_note, *plan.notes):
            if note:
                self.record.note(note)
        self.record.preset = self.served.preset_of_job()
        self.record.summary = self.served.summary()
        self.offload()  # after a torch fallback or an export, the weights go again
        if first_pass:
            if companion_notes is None:
                self.companions.start_job(self.source, self.record.note)
            for note in companion_notes or ():
                self.record.note(note)
            self.sampled = False

    def serve_control(self, hook) -> bool:
        """This job's ControlNet units into the OpenVINO UNet (opened with their residual inputs, or
        without when none run); True when they are served. A1111's: sd-webui-controlnet's hook."""
        return controlnet.serve_units(self.source.unet, self.served, self.record, hook, self)

    def serve_lora(self, lora: UNetLora) -> None:
        """The job's UNet LoRAs into the OpenVINO UNet's branch (none: the branch is emptied); one it
        can't take makes the job torch's, with the reason in the infotext."""
        try:
            self.served.set_lora(lora.layers)
        except UnsupportedLoraError as err:
            why = "LoRA support is off in Settings → OpenVINO" if not self.served.settings.lora else str(err)
            self.job_torch_reason = f"LoRA {', '.join(lora.names)}: {why}"
            return
        self.record.lora = ", ".join(lora.names)

    def sampling_starts(self) -> None:
        self.companions.prompts_encoded()
        if self.served is not None:  # lowvram: cond and uncond one call at a time (a lower peak)
            self.served.split_batches(1 if offload_mode() == "lowvram" else 0)

    def sampling_ended(self) -> None:
        """The UNet's buffers go until the next job (lowvram: its compiled models too; companions.py
        says why)."""
        if self.served is None or offload_mode() == "none":
            return
        if offload_mode() == "lowvram":
            self.served.drop_compiled()
        else:
            self.served.release_memory()
        self.control_models.after_phase(keep_compiled=offload_mode() != "lowvram")

    def decoding_ended(self) -> None:
        self.companions.decoded()

    def apply_settings(self, may_open: bool) -> None:
        """Reconfigure with the current settings, or open again after a failure (`may_open`: at a
        job's start and at Settings → Apply; not at a batch or hires pass of a job torch makes)."""
        if self.unsupported or self.source is None:
            return
        if self.served is None:
            if may_open:
                self.open_again()
            return
        try:
            self.served.configure(runtime_settings())
            self.offload()
        except Exception as err:
            self.use_torch(err)

    def reopen(self) -> None:
        """Settings → Apply changed how the UNet is compiled: take effect now."""
        self.apply_settings(may_open=True)

    def job_ended(self) -> None:
        """After a job that torch made while OpenVINO stays current (a LoHa, tiling, NaN), the
        torch weights go again: between jobs the webui holds what it holds when OpenVINO serves."""
        self.job_torch_reason = None
        if self.served is not None:
            self.offload()

    def release(self) -> None:
        if self.served is not None:
            self.served.release()
            self.served = None
