"""sd-ov's webui adapter: the OpenVINO UNet as an "SD Unet" option, its settings, and a
txt2img/img2img accordion. All the work is done by the `sd_ov` engine; this file only speaks
the webui's extension API (modules.sd_unet, scripts, script_callbacks, shared).

Failure policy: whatever goes wrong on the OpenVINO side (no device, unsupported model, full
disk, a shape the compiled model refuses) is reported in the progress area and the infotext,
and the picture is made by the torch UNet. A job never fails because of sd-ov.
"""

from __future__ import annotations

import contextlib
import gc
import html
import logging
from pathlib import Path

from modules import devices, script_callbacks, scripts, sd_models, sd_unet, shared

from sd_ov import cache, engine, ov_core
from sd_ov.deepcache import SCHEDULES, DeepCacheConfig
from sd_ov.errors import SdOvError, UnsupportedCallError
from sd_ov.ldm_unet import describe
from sd_ov.runtime import DEFAULT_SHAPE_POLICY, PRECISIONS, SHAPE_POLICIES

log = logging.getLogger("sd_ov")

SECTION = ("openvino", "OpenVINO")
LABEL_PREFIX = "[OpenVINO]"
INFOTEXT_KEY = "OpenVINO"
DEEPCACHE_INFOTEXT_KEY = "OpenVINO DeepCache"
SETTINGS_DEFAULTS = {
    "sd_ov_device": "CPU",
    "sd_ov_precision": "f32",
    "sd_ov_shape_policy": DEFAULT_SHAPE_POLICY,
    "sd_ov_cache_dir": "",
    "sd_ov_max_compiled": 2,
    "sd_ov_cache_compiled": True,
    "sd_ov_deepcache_interval": 0,
    "sd_ov_deepcache_branch": 0,
    "sd_ov_deepcache_schedule": "uniform",
}


def opt(key: str):
    value = getattr(shared.opts, key, None)
    return SETTINGS_DEFAULTS[key] if value is None else value


def cache_root() -> Path:
    """Settings → OpenVINO → cache folder; by default `<webui>/models/OpenVINO`."""
    custom = str(opt("sd_ov_cache_dir") or "").strip()
    if custom:
        return Path(custom).expanduser()
    from modules import paths

    return Path(paths.models_path) / "OpenVINO"


def current_recipe() -> dict:
    return dict(engine.FP32_RECIPE)


def recipe_summary(deepcache: DeepCacheConfig | None = None) -> str:
    """What the infotext records: recipe (with DeepCache when on), device, precision, shapes."""
    name = current_recipe()["name"]
    if deepcache is not None and deepcache.enabled:
        name += f"+{deepcache.label()}"
    return f"{name}, {opt('sd_ov_device')}, {opt('sd_ov_precision')}, {opt('sd_ov_shape_policy')}"


def settings_deepcache() -> DeepCacheConfig:
    return DeepCacheConfig(
        int(opt("sd_ov_deepcache_interval")),
        int(opt("sd_ov_deepcache_branch")),
        opt("sd_ov_deepcache_schedule"),
    )


def checkpoint_identity(info) -> tuple[str, str]:
    """(name, sha256) of a webui CheckpointInfo; the webui caches the hash in cache.json."""
    sha256 = getattr(info, "sha256", None)
    if not sha256 and hasattr(info, "calculate_shorthash"):
        info.calculate_shorthash()
        sha256 = info.sha256
    return info.model_name, sha256 or engine.file_hash(info.filename)


@contextlib.contextmanager
def torch_unet_serving():
    """Calls to the torch UNet go to torch while inside (the webui routes them to us otherwise)."""
    saved = sd_unet.current_unet
    sd_unet.current_unet = None
    try:
        yield
    finally:
        sd_unet.current_unet = saved


def webui_progress(message: str, fraction: float) -> None:
    """Engine progress → the webui's progress area (and the console)."""
    shared.state.textinfo = f"OpenVINO: {message}"
    print(f"[sd-ov] {message}")
    if shared.state.interrupted:
        from sd_ov.errors import Cancelled

        raise Cancelled("interrupted by the user")


class OpenVINOUnetOption(sd_unet.SdUnetOption):
    """One per checkpoint; "Automatic" picks it when its checkpoint is loaded."""

    def __init__(self, checkpoint_info) -> None:
        self.checkpoint_info = checkpoint_info
        self.model_name = checkpoint_info.model_name
        self.label = f"{LABEL_PREFIX} {checkpoint_info.model_name}"

    def create_unet(self) -> OpenVINOUnet:
        return OpenVINOUnet(self)


class OpenVINOUnet(sd_unet.SdUnet):
    def __init__(self, option: OpenVINOUnetOption) -> None:
        super().__init__()
        self.option = option
        self.ov_unet = None
        self.entry = None
        self.problem: str | None = None  # why torch serves instead, shown to the user
        self.served_calls = 0
        self.job_deepcache = DeepCacheConfig()  # this job's caching; off unless a job asks
        self.deepcache = None  # DeepCacheUNet, loaded when a job first asks for it

    def activate(self) -> None:
        """Load the cached OpenVINO UNet of the loaded checkpoint, exporting it on first use."""
        try:
            describe(shared.sd_model.model.diffusion_model)  # refuses SDXL & co before anything is written
            self.entry = self.prepare(current_recipe())
            self.open_runtime()
        except Exception as err:  # any failure: report it, torch makes the picture
            self.use_torch(err)

    @staticmethod
    def prepare(recipe: dict):
        """The loaded checkpoint's cache entry for `recipe`, exported (with progress) if absent."""
        model = shared.sd_model
        name, sha256 = checkpoint_identity(model.sd_checkpoint_info)
        with torch_unet_serving():
            return engine.prepare_entry(
                model.model.diffusion_model, cache_root(), name, sha256, recipe, progress=webui_progress
            ).entry

    @staticmethod
    def runtime_settings() -> dict:
        return {
            "device": opt("sd_ov_device"),
            "precision": opt("sd_ov_precision"),
            "shape_policy": opt("sd_ov_shape_policy"),
            "max_compiled": int(opt("sd_ov_max_compiled")),
            "cache_compiled": bool(opt("sd_ov_cache_compiled")),
            "progress": webui_progress,
        }

    def open_runtime(self) -> None:
        self.ov_unet = engine.open_unet(self.entry, **self.runtime_settings())
        self.deepcache = None
        self.problem = None

    def begin_job(self, config: DeepCacheConfig, expected_calls: int) -> None:
        """Before each batch and hires pass: this job's caching, with counters and features reset.

        DeepCache's models are exported (first use of a branch) and loaded here, with progress in
        the webui; if that fails, the job runs on the plain OpenVINO UNet and says why.
        """
        self.job_deepcache = config
        if self.ov_unet is None:
            return
        if not config.enabled:
            if self.deepcache is not None:
                self.deepcache.start(config)
            return
        try:
            if self.deepcache is None or self.deepcache.branch != config.branch:
                if self.deepcache is not None:
                    self.deepcache.release()  # another branch: its models go before the new ones come
                    self.deepcache = None
                entry = self.prepare(engine.deepcache_recipe(config.branch, current_recipe()))
                self.ov_unet.drop_compiled()  # the full model serves plain calls too: one copy in memory
                self.deepcache = engine.open_deepcache(entry, config, **self.runtime_settings())
            self.deepcache.start(config, expected_calls)
        except Exception as err:
            self.deepcache = None
            self.job_deepcache = DeepCacheConfig()
            self.problem = f"DeepCache unavailable, plain OpenVINO UNet used: {err}"
            log.warning("sd-ov: %s", self.problem)

    def use_torch(self, err: Exception) -> None:
        self.problem = str(err) if isinstance(err, SdOvError) else f"{type(err).__name__}: {err}"
        self.release()
        log.warning("sd-ov: the torch UNet serves instead: %s", self.problem)
        print(f"[sd-ov] OpenVINO UNet unavailable, using torch: {self.problem}")
        shared.state.textinfo = f"OpenVINO unavailable, using torch: {self.problem}"
        unet = shared.sd_model.model.diffusion_model
        unet.to(devices.device)

    def forward(self, x, timesteps, context, *args, **kwargs):
        extra = bool(args) or any(v is not None for v in kwargs.values())
        if self.ov_unet is not None and not extra:
            try:
                if self.deepcache is not None and self.job_deepcache.enabled:
                    out = self.deepcache(x, timesteps, context)
                elif self.deepcache is not None:  # same weights and output as the plain model
                    out = self.deepcache.full(x, timesteps, context)[0]
                else:
                    out = self.ov_unet(x, timesteps, context)
                self.served_calls += 1
                return out
            except UnsupportedCallError as err:  # this call only (e.g. an odd shape): torch serves it
                log.info("sd-ov: torch serves one call: %s", err)
            except Exception as err:
                self.use_torch(err)
        with torch_unet_serving():
            return shared.sd_model.model.diffusion_model(x, timesteps, context, *args, **kwargs)

    def release(self) -> None:
        if self.deepcache is not None:
            self.deepcache.release()
            self.deepcache = None
        if self.ov_unet is not None:
            self.ov_unet.release()
            self.ov_unet = None
            gc.collect()

    def deactivate(self) -> None:
        self.release()


def current_openvino_unet() -> OpenVINOUnet | None:
    unet = sd_unet.current_unet
    return unet if isinstance(unet, OpenVINOUnet) else None


def list_unets(unet_list: list) -> None:
    for info in sd_models.checkpoints_list.values():
        unet_list.append(OpenVINOUnetOption(info))


def reopen_runtime() -> None:
    """A changed device/precision/shape setting takes effect at once for the serving UNet."""
    unet = current_openvino_unet()
    if unet is None or unet.entry is None:
        return
    unet.release()
    try:
        unet.open_runtime()
    except Exception as err:
        unet.use_torch(err)


def device_choices() -> list[str]:
    try:
        return ov_core.device_choices()
    except Exception as err:  # OpenVINO broken: the settings page must still render
        log.warning("sd-ov: cannot list OpenVINO devices: %s", err)
        return ["CPU"]


def on_ui_settings() -> None:
    import gradio as gr

    def add(key: str, label: str, component=None, component_args=None, info: str = "") -> None:
        option = shared.OptionInfo(SETTINGS_DEFAULTS[key], label, component, component_args, section=SECTION)
        if info:
            option = option.info(info)
        shared.opts.add_option(key, option)

    add(
        "sd_ov_device",
        "OpenVINO device",
        gr.Dropdown,
        lambda: {"choices": device_choices()},
        "found at start; AUTO lets OpenVINO choose",
    )
    add(
        "sd_ov_precision",
        "Inference precision",
        gr.Radio,
        {"choices": list(PRECISIONS)},
        "f32 matches torch; bf16/f16 are faster where the device supports them",
    )
    add(
        "sd_ov_shape_policy",
        "Shapes",
        gr.Radio,
        {"choices": list(SHAPE_POLICIES)},
        "static: compile per picture size (faster on CPU); dynamic: one model for all sizes",
    )
    add(
        "sd_ov_max_compiled",
        "Compiled shapes kept in memory",
        gr.Slider,
        {"minimum": 1, "maximum": 6, "step": 1},
    )
    add("sd_ov_cache_compiled", "Keep compiled blobs on disk (faster start)", gr.Checkbox)
    add("sd_ov_cache_dir", "Cache folder (empty: models/OpenVINO)", gr.Textbox)
    add(
        "sd_ov_deepcache_interval",
        "DeepCache: full UNet every N calls (0: off)",
        gr.Slider,
        {"minimum": 0, "maximum": 10, "step": 1},
        "reuses the deep features in between; 3 ≈ 2x faster",
    )
    add(
        "sd_ov_deepcache_branch",
        "DeepCache: skip branch",
        gr.Slider,
        {"minimum": 0, "maximum": 10, "step": 1},
        "0 recomputes the least between full calls (fastest); deeper ones recompute more, closer to no cache",
    )
    add(
        "sd_ov_deepcache_schedule",
        "DeepCache: schedule",
        gr.Radio,
        {"choices": list(SCHEDULES)},
        "non-uniform spends more full calls early, where the layout forms",
    )
    for key in (
        "sd_ov_device",
        "sd_ov_precision",
        "sd_ov_shape_policy",
        "sd_ov_max_compiled",
        "sd_ov_cache_compiled",
    ):
        shared.opts.onchange(key, reopen_runtime)


def status_html() -> str:
    """What the next job will run: device, recipe, and whether the UNet is cached already."""
    model = getattr(shared, "sd_model", None)
    info = getattr(model, "sd_checkpoint_info", None)
    selected = getattr(shared.opts, "sd_unet", "Automatic")
    option = sd_unet.get_unet_option() if info is not None else None
    lines = [f"SD Unet setting: <b>{html.escape(str(selected))}</b>"]
    if not isinstance(option, OpenVINOUnetOption):
        lines.append(
            "The torch UNet will run (choose an [OpenVINO] option or Automatic in Settings → SD Unet)."
        )
        return "<br>".join(lines)
    device = str(opt("sd_ov_device"))
    try:
        ov_core.resolve_device(device)
        device_text = f"{html.escape(device)} ({html.escape(ov_core.device_full_name(device.split(':')[0]))})"
    except SdOvError as err:
        device_text = f"<span style='color:#c33'>{html.escape(str(err))}</span>"
    name, sha256 = info.model_name, getattr(info, "sha256", None)
    cached = "unknown (checkpoint hash not computed yet)"
    if sha256:
        entry, problem = cache.find(cache_root(), cache.EntryKey(name, sha256, current_recipe()))
        cached = "yes" if entry else ("invalid, will be rebuilt" if problem else "no: exported on first use")
    lines += [
        f"Device: {device_text}",
        f"Recipe: {html.escape(recipe_summary(settings_deepcache()))}",
        f"Cached: {html.escape(cached)}",
    ]
    unet = current_openvino_unet()
    if unet is not None and unet.problem:
        lines.append(f"<span style='color:#c33'>Last problem: {html.escape(unet.problem)}</span>")
    return "<br>".join(lines)


def job_deepcache(interval, branch, schedule) -> DeepCacheConfig:
    try:
        return DeepCacheConfig(int(interval or 0), int(branch or 0), str(schedule or "uniform"))
    except ValueError as err:
        log.warning("sd-ov: DeepCache off for this job: %s", err)
        return DeepCacheConfig()


def pasted_deepcache(params: dict, field: str):
    """The accordion's DeepCache control from a pasted infotext; interval 0 for OpenVINO pictures
    made without it; None (leave alone) for pictures not made by OpenVINO."""
    text = params.get(DEEPCACHE_INFOTEXT_KEY)
    if text is None:
        return 0 if field == "interval" and INFOTEXT_KEY in params else None
    try:
        return getattr(DeepCacheConfig.from_infotext(str(text)), field)
    except (ValueError, KeyError):
        return None


class OpenVINOScript(scripts.Script):
    """The accordion in txt2img/img2img: shows what will run, lets a job turn OpenVINO off."""

    def title(self) -> str:
        return "OpenVINO"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        import gradio as gr

        tab = "img2img" if is_img2img else "txt2img"
        with gr.Accordion("OpenVINO", open=False, elem_id=f"sd_ov_{tab}_accordion"):
            enabled = gr.Checkbox(
                label="Use the OpenVINO UNet for this job", value=True, elem_id=f"sd_ov_{tab}_enabled"
            )
            with gr.Row():
                interval = gr.Slider(
                    minimum=0,
                    maximum=10,
                    step=1,
                    label="DeepCache interval (0: off)",
                    value=lambda: int(opt("sd_ov_deepcache_interval")),
                    elem_id=f"sd_ov_{tab}_deepcache_interval",
                )
                branch = gr.Slider(
                    minimum=0,
                    maximum=10,
                    step=1,
                    label="DeepCache branch",
                    value=lambda: int(opt("sd_ov_deepcache_branch")),
                    elem_id=f"sd_ov_{tab}_deepcache_branch",
                )
                schedule = gr.Radio(
                    choices=list(SCHEDULES),
                    label="DeepCache schedule",
                    value=lambda: opt("sd_ov_deepcache_schedule"),
                    elem_id=f"sd_ov_{tab}_deepcache_schedule",
                )
            status = gr.HTML(value=status_html, elem_id=f"sd_ov_{tab}_status")
            refresh = gr.Button(value="Refresh status", elem_id=f"sd_ov_{tab}_refresh")
            refresh.click(fn=status_html, inputs=[], outputs=[status])
        # Pasting an OpenVINO picture's infotext turns it on and restores its DeepCache choice;
        # other infotexts leave the controls alone.
        self.infotext_fields = [
            (enabled, lambda params: True if INFOTEXT_KEY in params else None),
            (interval, lambda params: pasted_deepcache(params, "interval")),
            (branch, lambda params: pasted_deepcache(params, "branch")),
            (schedule, lambda params: pasted_deepcache(params, "schedule")),
        ]
        self.paste_field_names = []
        return [enabled, interval, branch, schedule]

    def process_batch(self, p, enabled=True, interval=0, branch=0, schedule="uniform", *args, **kwargs):
        unet = current_openvino_unet()
        if unet is not None:
            unet.begin_job(job_deepcache(interval, branch, schedule), int(p.steps))

    def before_hr(self, p, enabled=True, interval=0, branch=0, schedule="uniform", *args):
        unet = current_openvino_unet()
        if unet is not None:
            steps = int(getattr(p, "hr_second_pass_steps", 0) or p.steps)
            unet.begin_job(job_deepcache(interval, branch, schedule), steps)

    def before_process(self, p, enabled=True, *args):
        """Runs before the webui applies override_settings: the cleanest per-job switch."""
        p.sd_ov_saved_unet_setting = None
        if not enabled and getattr(shared.opts, "sd_unet", "Automatic") != "None":
            p.sd_ov_saved_unet_setting = shared.opts.sd_unet
            p.override_settings["sd_unet"] = "None"

    def postprocess_batch(self, p, enabled=True, *args, **kwargs):
        unet = current_openvino_unet()
        if unet is None:
            return
        if unet.ov_unet is not None and unet.served_calls:
            deepcache = unet.job_deepcache if unet.deepcache is not None else None
            p.extra_generation_params[INFOTEXT_KEY] = recipe_summary(deepcache)
            if deepcache is not None and deepcache.enabled:
                p.extra_generation_params[DEEPCACHE_INFOTEXT_KEY] = deepcache.infotext()
        elif unet.problem:
            p.extra_generation_params[INFOTEXT_KEY] = f"off (torch served: {unet.problem[:120]})"

    def postprocess(self, p, processed, enabled=True, *args):
        saved = getattr(p, "sd_ov_saved_unet_setting", None)
        if saved is not None and shared.opts.sd_unet != saved:
            shared.opts.sd_unet = saved  # the webui restores only settings it had stored


def on_script_unloaded() -> None:
    unet = current_openvino_unet()
    if unet is not None:
        unet.release()


script_callbacks.on_list_unets(list_unets)
script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_script_unloaded(on_script_unloaded)
