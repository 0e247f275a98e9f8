"""The "SD Unet" options and the SdUnet that serves a job: call the engine's served UNet, or
fall back to torch and record why.

An option is bound to its checkpoint. Chosen while another checkpoint is loaded, it serves that
checkpoint's own entry of the same recipe and says so, or refuses with a message: it never
serves one checkpoint's weights under another's label.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from modules import devices, sd_models, sd_unet, shared

from sd_ov import optimize
from sd_ov.cache import canonical
from sd_ov.deepcache import DeepCacheConfig
from sd_ov.engine import file_hash
from sd_ov.errors import Cancelled, NonFiniteOutputError, SdOvError, UnsupportedCallError
from sd_ov.ldm_unet import describe
from sd_ov.lora_branch import UnsupportedLoraError
from sd_ov.recipe import Recipe
from sd_ov.record import JobRecord
from sd_ov.served import RuntimeSettings, ServedUNet, UNetSource

from . import controlnet
from .controlnet import TorchServes
from .lora import UNetLora, networks_set_aside, unet_lora
from .offload import WebuiWeights, undo_lora_weights, unet_weights
from .progress import cancellable_progress, webui_progress
from .settings import cache_root, offload_mode, opt, runtime_settings
from .text_encoder import WebuiTextEncoder, servable
from .torch_unet import call_torch, foreign_forward, unet_calls_to
from .vae import WebuiVae

log = logging.getLogger("sd_ov")
LABEL_PREFIX = "[OpenVINO]"


def checkpoint_identity(info) -> tuple[str, str]:
    """(name, sha256) of a webui CheckpointInfo; the webui caches the hash in cache.json."""
    sha256 = getattr(info, "sha256", None)
    if not sha256 and hasattr(info, "calculate_shorthash"):
        info.calculate_shorthash()
        sha256 = info.sha256
    return info.model_name, sha256 or file_hash(info.filename)


def explain(err: BaseException) -> str:
    if isinstance(err, MemoryError):
        return "out of memory while preparing the OpenVINO UNet (nothing was written to the cache)"
    return str(err) if isinstance(err, SdOvError) else f"{type(err).__name__}: {err}"


class OpenVINOUnetOption(sd_unet.SdUnetOption):
    """The plain option (one per checkpoint, exported on first use; "Automatic" picks it), or an
    optimized recipe made in the OpenVINO tab, e.g. `[OpenVINO INT8 ToMe0.5] <checkpoint>`."""

    def __init__(self, checkpoint_info, recipe: Recipe | None = None) -> None:
        self.checkpoint_info = checkpoint_info
        self.model_name = checkpoint_info.model_name
        self.recipe = recipe or Recipe()
        tag = LABEL_PREFIX if self.recipe.is_plain else f"[OpenVINO {self.recipe.label()}]"
        self.label = f"{tag} {checkpoint_info.model_name}"

    def create_unet(self) -> OpenVINOUnet:
        return OpenVINOUnet(self)

    def _identity(self) -> tuple:
        return (self.label, getattr(self.checkpoint_info, "filename", None), canonical(self.recipe.key()))

    # The webui compares the chosen option with the current one (`==`) to decide whether to swap
    # UNets: a relisted but identical option must not take the compiled UNet down.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, OpenVINOUnetOption) and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())


class OpenVINOUnet(sd_unet.SdUnet):
    def __init__(self, option: OpenVINOUnetOption) -> None:
        super().__init__()
        self.option = option
        self.source: UNetSource | None = None  # the loaded checkpoint's torch UNet and cache entries
        self.served: ServedUNet | None = None
        self.unavailable: str | None = None  # why OpenVINO serves nothing now
        self.failed_settings: RuntimeSettings | None = None
        self.binding_note: str | None = None  # the option was chosen for another checkpoint
        self.job_torch_reason: str | None = None  # torch serves the rest of this job (NaN/inf)
        self.weights: WebuiWeights | None = None  # freed while OpenVINO serves (Settings → memory)
        self.vae: WebuiVae | None = None  # the VAE on OpenVINO (Settings → VAE through OpenVINO)
        self.text_encoder: WebuiTextEncoder | None = None  # likewise, the prompts' text encoder
        self.sampled = False  # this job's first UNet call has come
        self.controlnet_job = False  # this job's ControlNet units are served (controlnet.py)
        self.record = JobRecord()

    @property
    def recipe(self) -> Recipe:
        return self.option.recipe

    def activate(self) -> None:
        """Load the cached OpenVINO UNet of the loaded checkpoint, exporting a plain one on first use."""
        model = shared.sd_model
        unet = model.model.diffusion_model
        self.record = JobRecord()
        try:
            describe(unet)  # refuses SD3, Flux & co before anything is written
            name, sha256 = checkpoint_identity(model.sd_checkpoint_info)
            self.weights = unet_weights(unet, model.sd_checkpoint_info.filename)
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
        if self.served is not None and offload_mode() != "none" and not torch_needed:
            self.weights.release(webui_progress)
        else:
            self.weights.ensure(webui_progress)

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
        self.failed_settings = None
        served = ServedUNet(self.source, self.recipe, settings, cancellable_progress)
        served.open()
        self.served, self.unavailable = served, None

    def use_torch(self, err: BaseException) -> None:
        """OpenVINO can't serve: give its memory back, say why, and let torch make the picture."""
        self.unavailable = explain(err)
        self.release()
        try:  # retried when the settings change; after a cancel, at the next job
            self.failed_settings = None if isinstance(err, Cancelled) else runtime_settings()
        except ValueError:
            self.failed_settings = None
        log.warning("sd-ov: the torch UNet serves instead: %s", self.unavailable)
        print(f"[sd-ov] OpenVINO UNet unavailable, using torch: {self.unavailable}")
        shared.state.textinfo = f"OpenVINO unavailable, using torch: {self.unavailable}"
        if self.weights is not None:
            self.weights.ensure(webui_progress)
        if self.source is not None:
            self.source.unet.to(devices.device)  # apply_unet moved it to the CPU for us

    def start_job(self, deepcache: DeepCacheConfig, expected_calls: int, first_pass: bool = True) -> None:
        """At each batch (first_pass) and hires pass: a fresh record, this job's settings."""
        if first_pass:
            self.record = JobRecord()
            self.job_torch_reason = None
            if self.binding_note:
                self.record.note(self.binding_note)
        hook = self.check_controlnet()
        lora = unet_lora(self.source.unet) if self.source is not None else UNetLora()
        if lora.why_not:  # the Lora extension applies it in torch's forward: never dropped silently
            self.job_torch_reason = lora.why_not
        self.apply_settings(retry_unchanged=False)  # a per-job override_settings takes effect here
        if self.served is None:
            self.record.unavailable = self.record.unavailable or self.unavailable
            return
        if not lora.why_not:
            self.serve_lora(lora)  # before start_job: the first LoRA reopens the models with the branch
        self.serve_controlnet(hook)  # before start_job too: DeepCache does not run with ControlNet
        why_not = self.served.start_job(deepcache, expected_calls)
        if why_not:
            self.record.note(why_not)
        if self.served.settings.precision_note:
            self.record.note(self.served.settings.precision_note)
        self.record.preset = self.served.preset_of_job()
        self.record.summary = self.served.summary()
        self.offload()  # after a torch fallback or an export, the weights go again
        if first_pass:
            self.sync_companions()
            self.sampled = False

    def check_controlnet(self):
        """sd-webui-controlnet's hook when this job's units can be served (else None, and the
        record says why torch serves the job); another extension's forward: torch, with a note."""
        self.controlnet_job = False
        unet = self.source.unet if self.source is not None else None
        if unet is None or not foreign_forward(unet):
            return None
        hook = controlnet.controlnet_hook(unet)
        why = controlnet.why_not_served(hook) if hook is not None else None
        if hook is None:
            self.record.unavailable = "another extension replaced the UNet's forward; torch served it"
        elif why:
            controlnet.uninstall(unet)
            self.record.unavailable = f"{why}; torch served the job"
            return None
        return hook

    def serve_controlnet(self, hook) -> None:
        """This job's ControlNet units add their residuals into the OpenVINO UNet (opened with
        their inputs), or none come (opened without)."""
        unet = self.source.unet
        try:
            self.served.set_control(hook is not None)
        except Exception as err:  # e.g. a graph without SD skip joins: this job is torch's
            controlnet.uninstall(unet)
            self.record.unavailable = f"ControlNet on torch: {explain(err)}"
            return
        if hook is None:
            return
        controlnet.install(unet, self)
        self.controlnet_job = True
        kinds = sorted({p.control_model_type.name for p in hook.control_params})
        units = len(hook.control_params)
        self.record.controlnet = (
            f"{units} unit{'s' if units > 1 else ''} ({', '.join(kinds)}): residuals into the OpenVINO UNet, "
            "control models on torch"
        )

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

    def sync_companions(self) -> None:
        """The VAE and the text encoder on OpenVINO for this job where the settings say so (their
        torch weights freed unless Settings → memory keeps them); torch's otherwise."""
        model = shared.sd_model
        release_torch = offload_mode() != "none"
        self.vae = self._sync(
            self.vae,
            "VAE",
            getattr(model, "first_stage_model", None),
            opt("sd_ov_vae"),
            WebuiVae,
            release_torch,
        )
        cond = getattr(model, "cond_stage_model", None)
        wanted = bool(opt("sd_ov_text_encoder")) and cond is not None and servable(cond)
        self.text_encoder = self._sync(
            self.text_encoder, "text encoder", cond, wanted, WebuiTextEncoder, release_torch
        )

    def _sync(self, current, what: str, module, wanted: bool, kind, release_torch: bool):
        """One companion: kept, made (first use, or the webui replaced the module), or dropped."""
        if current is not None and (not wanted or current.module is not module):
            current.detach()
            current = None
        if not wanted or module is None or self.source is None:
            return None
        try:
            if current is None:
                current = kind(
                    module,
                    self.source.checkpoint_name,
                    self.source.checkpoint_hash,
                    shared.sd_model.sd_checkpoint_info.filename,
                    webui_progress,
                )
            current.sync(release_torch)
            return current
        except Exception as err:  # this part stays on torch; the UNet is unaffected
            if current is not None:
                current.detach()
            self.record.note(f"{what} on torch: {explain(err)}")
            log.warning("sd-ov: the OpenVINO %s is unavailable: %s", what, err)
            return None

    def drop_companions(self) -> None:
        """The webui's own VAE and text encoder back, their OpenVINO models' memory given back."""
        for companion in (self.vae, self.text_encoder):
            if companion is not None:
                companion.detach()
        self.vae = self.text_encoder = None

    # A compiled model keeps its activation buffers between calls: measured in the webui at 512²,
    # the OpenVINO VAE and text encoder held ~4 GiB after a job. OpenVINO's
    # `CompiledModel.release_memory()` gives them back and keeps the model (the SD1.5 VAE decoder
    # at 512²: RSS 1684 → 636 MiB, 0.13 s, nothing compiled at the next decode; AMD EPYC Zen 4,
    # /tmp measurement of 2026-12-02). So `release` keeps every model compiled and gives their
    # buffers back after their phase; `lowvram` drops the compiled models too (the lightest; they
    # compile again, from the blob cache); `none` keeps everything.

    def sampling_starts(self) -> None:
        """The prompts are encoded: the text encoder's buffers (or model, in lowvram) go."""
        if offload_mode() != "none" and self.text_encoder is not None:
            self.text_encoder.after_phase(keep_compiled=offload_mode() == "release")

    def sampling_ended(self) -> None:
        """The UNet's buffers go until the next job (lowvram: its compiled models too)."""
        if self.served is None or offload_mode() == "none":
            return
        if offload_mode() == "lowvram":
            self.served.drop_compiled()
        else:
            self.served.release_memory()

    def decoding_ended(self) -> None:
        """The VAE's buffers (or model, in lowvram) go until the next job (kept in `none`)."""
        if offload_mode() != "none" and self.vae is not None:
            self.vae.after_phase(keep_compiled=offload_mode() == "release")

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
            out = self.served(x, timesteps, context, *y, control=control)
            self.record.served()
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

    def apply_settings(self, retry_unchanged: bool) -> None:
        """Open or reconfigure with the current settings. After a failure, a job tries again only
        when the settings changed (`retry_unchanged` is Settings → Apply: always)."""
        if self.source is None or not self.source.checkpoint_hash:
            return
        try:
            settings = runtime_settings()
            if self.served is not None:
                self.served.configure(settings)
            elif retry_unchanged or settings != self.failed_settings:
                self.open(settings)
            self.offload()
        except Exception as err:
            self.use_torch(err)

    def reopen(self) -> None:
        """Settings → Apply changed how the UNet is compiled: take effect now."""
        self.apply_settings(retry_unchanged=True)

    def release(self) -> None:
        if self.served is not None:
            self.served.release()
            self.served = None

    def deactivate(self) -> None:
        """The webui takes its UNet back (another option, or a checkpoint loading into it)."""
        if self.source is not None:
            controlnet.uninstall(self.source.unet)  # ControlNet's calls go to torch again
        self.release()
        self.drop_companions()
        if self.weights is not None:
            self.weights.ensure(webui_progress)
        self.weights = None
        self.source = None  # the torch UNet is the webui's again; keep no reference to it


def current_openvino_unet() -> OpenVINOUnet | None:
    unet = sd_unet.current_unet
    return unet if isinstance(unet, OpenVINOUnet) else None


def reopen_current() -> None:
    unet = current_openvino_unet()
    if unet is not None:
        unet.reopen()


def on_model_loaded(sd_model) -> None:
    """A checkpoint added after start (copied in, the checkpoint list refreshed, then loaded) gets its
    option now: the webui lists SD Unet options only at start and by the refresh button beside
    "SD Unet", so "Automatic" would silently leave it on torch."""
    info = getattr(sd_model, "sd_checkpoint_info", None)
    name = getattr(info, "model_name", None)
    listed = any(isinstance(o, OpenVINOUnetOption) and o.model_name == name for o in sd_unet.unet_options)
    if name and not listed:
        sd_unet.list_unets()


def list_unets(unet_list: list) -> None:
    """The plain option of every checkpoint, then every optimized recipe found in the cache."""
    checkpoints = list(sd_models.checkpoints_list.values())
    unet_list.extend(OpenVINOUnetOption(info) for info in checkpoints)
    try:
        entries = optimize.recipe_entries(cache_root())
    except OSError as err:  # an unreadable cache folder must not break the webui's list
        log.warning("sd-ov: cannot list the OpenVINO cache: %s", err)
        return
    by_name = {info.model_name: info for info in checkpoints}
    for entry in entries:
        info = by_name.get(entry.manifest.checkpoint_name)
        if info is not None and not entry.manifest.recipe.is_plain:
            unet_list.append(OpenVINOUnetOption(info, entry.manifest.recipe))
