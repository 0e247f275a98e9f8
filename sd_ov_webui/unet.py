"""The "SD Unet" options and the SdUnet that serves a job: call the engine's served UNet, or
fall back to torch and record why.

An option is bound to its checkpoint. Chosen while another checkpoint is loaded, it serves that
checkpoint's own entry of the same recipe and says so, or refuses with a message: it never
serves one checkpoint's weights under another's label.

A fallback costs the job it happens in only: whatever fails while opening or serving, torch makes
that job, what OpenVINO held is given back, and the next job opens again from a clean state (a
model the engine does not support is the one lasting refusal).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

from modules import devices, sd_unet, shared

from sd_ov import (
    Cancelled,
    DeepCacheConfig,
    JobRecord,
    NonFiniteOutputError,
    Recipe,
    RuntimeSettings,
    ServedUNet,
    UNetSource,
    UnsupportedCallError,
    UnsupportedLoraError,
    describe,
)

from . import controlnet
from .companions import Companions
from .control_model import ControlModels
from .controlnet import TorchServes
from .errors import explain, unexpected
from .lora import UNetLora, networks_set_aside, unet_lora
from .offload import WebuiWeights, undo_lora_weights, unet_weights
from .options import OpenVINOUnetOption, checkpoint_identity
from .progress import cancellable_progress, webui_progress
from .recipe_switch import HANDOVER
from .settings import cache_root, offload_mode, runtime_settings
from .torch_patches import unet_notes, unet_refusal
from .torch_unet import call_torch, foreign_forward, unet_calls_to

log = logging.getLogger("sd_ov")


class OpenVINOUnet(sd_unet.SdUnet):
    def __init__(self, option: OpenVINOUnetOption) -> None:
        super().__init__()
        self.option = option
        self.source: UNetSource | None = None  # the loaded checkpoint's torch UNet and cache entries
        self.served: ServedUNet | None = None
        self.unavailable: str | None = None  # why OpenVINO serves nothing now
        self.unsupported: str | None = None  # the engine refuses this model: torch, not retried
        self.said: tuple[str | None, int] = (None, 0)  # the last failure said, and how often
        self.opened_for_job = False  # activate opened it for the job that activated it
        self.binding_note: str | None = None  # the option was chosen for another checkpoint
        self.job_torch_reason: str | None = None  # torch serves the rest of this job (NaN/inf)
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

    @property
    def recipe(self) -> Recipe:
        return self.option.recipe

    def activate(self) -> None:
        """Load the cached OpenVINO UNet of the loaded checkpoint, exporting a plain one on first use."""
        model = shared.sd_model
        unet = model.model.diffusion_model
        self.record = JobRecord()
        # from the option before, at a recipe switch: its freed weights and compiled companions
        self.weights, companions = HANDOVER.take(unet)
        self.companions = companions or self.companions
        try:
            describe(unet)  # refuses SD3, Flux & co before anything is written
        except Exception as err:
            self.source, self.unsupported = UNetSource(cache_root(), "", "", unet), explain(err)
            self.use_torch(err)
            return
        self.open_again()
        self.opened_for_job = True

    def begin_job(self) -> None:
        """A job starts (before the webui's `p.init`): after an earlier job's failure, open again
        once, unless this job's activation just tried."""
        if not self.opened_for_job:
            self.apply_settings(may_open=True)
        self.opened_for_job = False

    def open_again(self) -> None:
        """Bind to the loaded checkpoint (once) and open its OpenVINO UNet with the current
        settings; a failure leaves this job to torch, and the next job calls this again."""
        model = shared.sd_model
        unet = model.model.diffusion_model
        try:
            if self.source is None or not self.source.checkpoint_hash:
                name, sha256 = checkpoint_identity(model.sd_checkpoint_info)
                self.weights = self.weights or unet_weights(unet, model.sd_checkpoint_info.filename)
                self.source = UNetSource(cache_root(), name, sha256, unet, torch_calls=self.torch_computes)
                self.binding_note = self.check_binding(model.sd_checkpoint_info)
            self.open(runtime_settings())
            self.offload()
        except Exception as err:  # any failure: report it, torch makes the picture
            self.source = self.source or UNetSource(cache_root(), "", "", unet)
            self.use_torch(err)

    @contextlib.contextmanager
    def torch_computes(self) -> Iterator[None]:
        """While inside (an export's trace), the torch UNet has its base weights (no LoRA merged in)
        and takes its calls."""
        if self.weights is not None:
            self.weights.ensure(webui_progress)
        with networks_set_aside(), unet_calls_to(None):
            if self.source is not None:
                undo_lora_weights(self.source.unet)
            yield

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

    def check_binding(self, loaded) -> str | None:
        """A note when the option was made for another checkpoint than the loaded one."""
        chosen = self.option.checkpoint_info
        if getattr(chosen, "filename", None) == getattr(loaded, "filename", None):
            return None
        return (
            f"{self.option.label} was chosen while {loaded.model_name} is loaded: "
            f"{loaded.model_name}'s own {self.recipe.label()} UNet serves"
        )

    def open(self, settings: RuntimeSettings) -> None:
        served = ServedUNet(self.source, self.recipe, settings, cancellable_progress)
        served.open()
        self.served, self.unavailable = served, None

    def use_torch(self, err: BaseException) -> None:
        """OpenVINO can't serve: give back what it holds (the UNet, its companions and control
        models), say why, and let torch make this job; the next job opens again."""
        self.unavailable = explain(err)
        self.release()
        self.companions.drop()
        self.control_models.release()
        self.say_unavailable(err)
        shared.state.textinfo = f"OpenVINO unavailable, using torch: {self.unavailable}"
        if self.weights is not None:
            self.weights.ensure(webui_progress)
        if self.source is not None:
            self.source.unet.to(devices.device)  # apply_unet moved it to the CPU for us

    def say_unavailable(self, err: BaseException) -> None:
        """The console hears a cause once, with the Python error and its traceback where it is
        not one of the engine's own; the same cause at a later job once more, with what the
        user can do; then nothing (the infotext still says it at every job)."""
        reason, times = self.said
        times = times + 1 if reason == self.unavailable else 1
        self.said = (self.unavailable, times)
        if isinstance(err, Cancelled) or times > 2:
            return
        if times == 2:
            print(
                f"[sd-ov] OpenVINO unavailable again, for the same cause: {self.unavailable}. Each job "
                "tries again; SD Unet 'None' (or the accordion's switch) keeps jobs on torch without trying."
            )
            return
        log.warning("sd-ov: the torch UNet serves instead: %s", self.unavailable)
        print(f"[sd-ov] OpenVINO UNet unavailable, using torch: {self.unavailable}")
        if unexpected(err):
            log.error("sd-ov: %s: %s", type(err).__name__, err, exc_info=err)

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
        deepcache: DeepCacheConfig,
        expected_calls: int,
        first_pass: bool = True,
        companion_notes: list[str] | None = None,
    ) -> None:
        """At each batch (first_pass) and hires pass: a fresh record, this job's settings; the
        companions as `prepare_companions` left them (its notes given), or prepared now."""
        unet = self.source.unet if self.source is not None else None
        if first_pass:
            self.record = JobRecord()
            self.control_models.start_job()
            if self.binding_note:
                self.record.note(self.binding_note)
        hook = controlnet.job_hook(unet, self.record)
        # provisional until serve_units says: apply_settings' offload must not read the torch UNet
        # back for ControlNet's forward (3.2 GB read and checked again at every ControlNet job)
        self.controlnet_job = hook is not None
        lora = unet_lora(unet) if unet is not None else UNetLora()
        # the Lora extension applies a LoRA in torch's forward, the webui tiling in torch's convs:
        # what the compiled UNet can't follow makes the job torch's, never a silently other picture
        earlier = None if first_pass else self.job_torch_reason  # a hires pass keeps its first pass's
        self.job_torch_reason = lora.why_not or unet_refusal(unet) or earlier
        self.apply_settings(may_open=False)  # a per-job override_settings takes effect here
        if self.served is None:
            self.record.unavailable = self.record.unavailable or self.unavailable
            return
        try:  # a reopen here (the first LoRA, a ControlNet switch) may be interrupted: torch serves
            if not lora.why_not:
                self.serve_lora(lora)  # before start_job: the first LoRA reopens the models with the branch
            # before start_job too: DeepCache opens its pair with or without ControlNet's inputs
            self.controlnet_job = controlnet.serve_units(
                self.source.unet, self.served, self.record, hook, self
            )
            why_not = self.served.start_job(deepcache, expected_calls)
        except Exception as err:
            self.use_torch(err)
            self.record.unavailable = self.unavailable
            return
        if why_not:
            self.record.note(why_not)
        if self.served.settings.precision_note:
            self.record.note(self.served.settings.precision_note)
        for note in unet_notes(hires_pass=not first_pass):
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

    def controlnet_reason(self) -> str | None:
        """Why torch serves ControlNet's next call; None: OpenVINO does (controlnet.Server)."""
        reason = self.job_torch_reason or self.unavailable
        if self.served is None:
            return reason or "the OpenVINO UNet is not loaded"
        if not self.served.with_control:
            return reason or "the OpenVINO UNet was not opened with ControlNet's inputs"
        return reason

    def serve_controlled(self, x, timesteps, context, y, residuals):
        """One ControlNet call: the UNet with the units' residuals on OpenVINO (controlnet.Server)."""
        if self.served.takes_y and y is None:
            raise TorchServes("this UNet takes a vector conditioning (y) and the call gave none")
        return self.serve_call(x, timesteps, context, (y,) if self.served.takes_y else (), residuals)

    def control_models_served(self, params):
        """ControlNet's units' control models on OpenVINO around one call (controlnet.Server)."""
        settings = self.served.settings
        return self.control_models.serving(params, settings.device, settings.precision)

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

    def forward(self, x, timesteps, context, *args, **kwargs):
        reason = self.job_torch_reason or self.unavailable
        extra, y = [], ()  # the common call has none: nothing to build
        if args or kwargs:
            named = {k: v for k, v in kwargs.items() if v is not None}
            if self.served is not None and self.served.takes_y and "y" in named:  # SDXL's vector
                y = (named.pop("y"),)
            extra = [f"#{i}" for i in range(len(args))] + list(named)
        if self.served is None:
            reason = reason or "the OpenVINO UNet is not loaded"
        elif extra:
            reason = f"extra UNet inputs ({', '.join(extra)}) that the compiled UNet does not take"
        elif self.served.takes_y and not y:
            reason = "this UNet takes a vector conditioning (y) and the call gave none"
        elif reason is None:
            try:
                return self.serve_call(x, timesteps, context, y)
            except TorchServes as err:
                reason = str(err)
        self.torch_serves(reason)
        return call_torch(
            self.source.unet if self.source else shared.sd_model.model.diffusion_model,
            x,
            timesteps,
            context,
            *args,
            **kwargs,
        )

    def serve_call(self, x, timesteps, context, y: tuple = (), control: list | tuple = ()):
        """One UNet call on OpenVINO; TorchServes with the reason when torch must make it."""
        try:
            if not self.sampled:
                self.sampled = True
                self.sampling_starts()
            started = time.perf_counter()
            out = self.served(x, timesteps, context, *y, control=control)
            self.record.served(started, time.perf_counter())
            return out
        except UnsupportedCallError as err:  # this call only (e.g. an odd shape)
            reason = str(err)
        except NonFiniteOutputError as err:  # this job's remaining calls go to torch
            reason = self.job_torch_reason = str(err)
        except Exception as err:
            self.use_torch(err)
            reason = self.unavailable
        raise TorchServes(reason)

    def torch_serves(self, reason: str) -> None:
        """Torch makes this call: counted with its reason (said once per job), weights back."""
        if self.record.fell_back(reason):
            shared.state.textinfo = f"OpenVINO: torch serves: {reason}"
            log.info("sd-ov: torch serves: %s", reason)
        if self.weights is not None:
            self.weights.ensure(webui_progress)  # freed while OpenVINO served

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

    def deactivate(self) -> None:
        """The webui takes its UNet back (another option, or a checkpoint loading into it)."""
        if self.source is not None:
            controlnet.uninstall(self.source.unet)  # ControlNet's calls go to torch again
        self.release()
        self.control_models.release()
        if self.source is None or not HANDOVER.leave(self.source.unet, self.weights, self.companions):
            self.companions.drop()
            if self.weights is not None:
                self.weights.ensure(webui_progress)
        self.weights, self.companions = None, Companions()
        self.source = None  # the torch UNet is the webui's again; keep no reference to it
