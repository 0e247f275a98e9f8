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
from typing import NamedTuple

from modules import call_queue, devices, script_callbacks, scripts, sd_models, sd_unet, shared

from sd_ov import cache, engine, optimize, ov_core, report
from sd_ov.calibration import CapturingUNet, default_prompts
from sd_ov.compress import INT8_MODES
from sd_ov.deepcache import SCHEDULES, DeepCacheConfig
from sd_ov.errors import Cancelled, SdOvError, UnsupportedCallError
from sd_ov.ldm_unet import describe
from sd_ov.recipe import DEFAULT_SAMPLES, PRUNE_MODES, Recipe
from sd_ov.runtime import DEFAULT_SHAPE_POLICY, PRECISIONS, SHAPE_POLICIES
from sd_ov.tome import MAX_RATIO

log = logging.getLogger("sd_ov")

SECTION = ("openvino", "OpenVINO")
LABEL_PREFIX = "[OpenVINO]"
INFOTEXT_KEY = "OpenVINO"
DEEPCACHE_INFOTEXT_KEY = "OpenVINO DeepCache"
TOME_INFOTEXT_KEY = "OpenVINO token merging"
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


def recipe_summary(recipe: Recipe, deepcache: DeepCacheConfig | None = None) -> str:
    """What the infotext records: recipe (with DeepCache when on), device, precision, shapes."""
    name = recipe.name()
    if deepcache is not None and deepcache.enabled:
        name += f"+{deepcache.label()}"
    return f"{name}, {opt('sd_ov_device')}, {runtime_precision(recipe)}, {opt('sd_ov_shape_policy')}"


def runtime_precision(recipe: Recipe) -> str:
    """A recipe made for a precision runs at it; the plain recipe follows the setting."""
    return recipe.precision if recipe.precision != "f32" else str(opt("sd_ov_precision"))


def webui_token_merging(p) -> float:
    """The webui's own token merging ratio for this job (0 when off or unknown)."""
    try:
        return float(p.get_token_merging_ratio() or 0)
    except (AttributeError, TypeError, ValueError):
        return float(getattr(shared.opts, "token_merging_ratio", 0) or 0)


def token_merging_note(webui_ratio: float, recipe: Recipe) -> str | None:
    """Why the webui's token merging setting does not change what the OpenVINO UNet does."""
    if webui_ratio <= 0 or abs(webui_ratio - recipe.tome) < 1e-6:
        return None
    baked = f"merges {recipe.tome:g}" if recipe.tome > 0 else "merges no tokens"
    return (
        f"webui ratio {webui_ratio:g} not applied: the compiled UNet {baked}; its ratio is set when it is "
        "optimized (OpenVINO tab → Token merging)"
    )


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


class FunctionUnet(sd_unet.SdUnet):
    """An SdUnet serving the webui's UNet calls with a function: how Optimize runs the webui's
    own sampler on the FP32 OpenVINO UNet (capturing its inputs) or on a recipe."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x, timesteps, context, *args, **kwargs):
        if args or any(v is not None for v in kwargs.values()):
            raise UnsupportedCallError("Optimize's sampling takes plain UNet calls (no ControlNet & co)")
        return self.fn(x, timesteps, context)


@contextlib.contextmanager
def unet_calls_to(fn=None):
    """The webui's UNet calls go to `fn` while inside; to the torch UNet itself when None
    (the webui routes them to the current SdUnet otherwise)."""
    saved = sd_unet.current_unet
    sd_unet.current_unet = None if fn is None else FunctionUnet(fn)
    try:
        yield
    finally:
        sd_unet.current_unet = saved


def webui_progress(message: str, fraction: float) -> None:
    """Engine progress → the webui's progress area (and the console)."""
    shared.state.textinfo = f"OpenVINO: {message}"
    print(f"[sd-ov] {message}")
    if shared.state.interrupted:
        raise Cancelled("interrupted by the user")


class OpenVINOUnetOption(sd_unet.SdUnetOption):
    """The plain option (one per checkpoint, exported on first use; "Automatic" picks it), or an
    optimized recipe made in the OpenVINO tab, e.g. `[OpenVINO INT8 ToMe0.5] <checkpoint>`."""

    def __init__(self, checkpoint_info, recipe: Recipe | None = None) -> None:
        self.checkpoint_info = checkpoint_info
        self.model_name = checkpoint_info.model_name
        self.recipe = recipe or Recipe()
        self.optimized = recipe is not None
        tag = f"[OpenVINO {self.recipe.label()}]" if self.optimized else LABEL_PREFIX
        self.label = f"{tag} {checkpoint_info.model_name}"

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

    @property
    def recipe(self) -> Recipe:
        return self.option.recipe

    def activate(self) -> None:
        """Load the cached OpenVINO UNet of the loaded checkpoint, exporting a plain one on first use."""
        try:
            describe(shared.sd_model.model.diffusion_model)  # refuses SDXL & co before anything is written
            self.entry = self.optimized_entry() if self.option.optimized else self.prepare(self.recipe.key())
            self.open_runtime()
        except Exception as err:  # any failure: report it, torch makes the picture
            self.use_torch(err)

    @staticmethod
    def prepare(recipe: dict):
        """The loaded checkpoint's cache entry for `recipe`, exported (with progress) if absent."""
        model = shared.sd_model
        name, sha256 = checkpoint_identity(model.sd_checkpoint_info)
        with unet_calls_to(None):
            return engine.prepare_entry(
                model.model.diffusion_model, cache_root(), name, sha256, recipe, progress=webui_progress
            ).entry

    def optimized_entry(self) -> cache.CacheEntry:
        """An optimized recipe is made only by Optimize: if its entry is gone, say so."""
        name, sha256 = checkpoint_identity(shared.sd_model.sd_checkpoint_info)
        entry, problem = cache.find(cache_root(), cache.EntryKey(name, sha256, self.recipe.key()))
        if entry is None:
            raise SdOvError(
                f"{self.option.label} is not in the cache ({problem or 'deleted or never made'}): "
                "make it with Optimize in the OpenVINO tab"
            )
        return entry

    def runtime_settings(self) -> dict:
        return {
            "device": opt("sd_ov_device"),
            "precision": runtime_precision(self.recipe),
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
        if self.option.optimized:
            self.job_deepcache = DeepCacheConfig()
            self.problem = f"DeepCache runs on the plain [OpenVINO] option only, not on {self.recipe.label()}"
            return
        try:
            if self.deepcache is None or self.deepcache.branch != config.branch:
                if self.deepcache is not None:
                    self.deepcache.release()  # another branch: its models go before the new ones come
                    self.deepcache = None
                entry = self.prepare(engine.deepcache_recipe(config.branch, self.recipe.key()))
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
        with unet_calls_to(None):
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
    """The plain option of every checkpoint, then every optimized recipe found in the cache."""
    checkpoints = list(sd_models.checkpoints_list.values())
    for info in checkpoints:
        unet_list.append(OpenVINOUnetOption(info))
    try:
        entries = optimize.recipe_entries(cache_root())
    except OSError as err:  # an unreadable cache folder must not break the webui's list
        log.warning("sd-ov: cannot list the OpenVINO cache: %s", err)
        return
    by_name = {info.model_name: info for info in checkpoints}
    for entry in entries:
        recipe = Recipe.from_key(entry.manifest["recipe"])
        info = by_name.get(entry.manifest["checkpoint"]["name"])
        if info is not None and not recipe.is_plain:
            unet_list.append(OpenVINOUnetOption(info, recipe))


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
        entry, problem = cache.find(cache_root(), cache.EntryKey(name, sha256, option.recipe.key()))
        if entry:
            cached = "yes"
        elif option.optimized:
            cached = "no: make it with Optimize in the OpenVINO tab"
        else:
            cached = "invalid, will be rebuilt" if problem else "no: exported on first use"
    deepcache = settings_deepcache() if not option.optimized else None
    lines += [
        f"Device: {device_text}",
        f"Recipe: {html.escape(recipe_summary(option.recipe, deepcache))}",
        f"Cached: {html.escape(cached)}",
    ]
    note = token_merging_note(float(getattr(shared.opts, "token_merging_ratio", 0) or 0), option.recipe)
    if note:
        lines.append(f"Token merging: {html.escape(note)}")
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
            p.extra_generation_params[INFOTEXT_KEY] = recipe_summary(unet.recipe, deepcache)
            if deepcache is not None and deepcache.enabled:
                p.extra_generation_params[DEEPCACHE_INFOTEXT_KEY] = deepcache.infotext()
            note = token_merging_note(webui_token_merging(p), unet.recipe)
            if note:
                p.extra_generation_params[TOME_INFOTEXT_KEY] = note
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


# ---------------------------------------------------------------------------------------------
# The OpenVINO tab: Optimize the loaded checkpoint's UNet into a recipe, list and delete recipes.
# ---------------------------------------------------------------------------------------------


class SamplingJob(NamedTuple):
    """How Optimize runs the webui's sampler: for calibration (every prompt) and the sample picture
    (the first prompt), at the tab's sampler, size and steps. (Not a dataclass: the webui loads
    scripts without a sys.modules entry, which dataclasses need.)"""

    prompts: tuple[str, ...]
    sampler: str
    width: int
    height: int
    steps: int
    seed: int = 1234


def webui_picture(job: SamplingJob, prompt: str, seed: int, unet_fn=None):
    """One txt2img picture (numpy RGB) made by the webui itself, its UNet calls served by `unet_fn`
    (torch when None). The webui's token merging is off: it would change only the torch picture."""
    import numpy as np
    from modules import processing

    p = processing.StableDiffusionProcessingTxt2Img(
        sd_model=shared.sd_model,
        prompt=prompt,
        negative_prompt="",
        seed=seed,
        sampler_name=job.sampler,
        steps=job.steps,
        width=job.width,
        height=job.height,
        cfg_scale=7.0,
        batch_size=1,
        n_iter=1,
        do_not_save_samples=True,
        do_not_save_grid=True,
        override_settings={"sd_unet": "None", "token_merging_ratio": 0},
        override_settings_restore_afterwards=True,
    )
    with unet_calls_to(unet_fn):
        processed = processing.process_images(p)
    if not processed.images:
        raise Cancelled("the sampler was interrupted")
    return np.asarray(processed.images[0].convert("RGB"))


def webui_capture(job: SamplingJob):
    """Calibration: the webui's sampler makes a picture per prompt with the FP32 OpenVINO UNet
    that Optimize hands over; every UNet call's inputs are kept."""

    def capture(runtime, progress):
        capturing = CapturingUNet(runtime)
        for i, prompt in enumerate(job.prompts):
            progress(f"calibration picture {i + 1}/{len(job.prompts)}: {prompt[:60]}", i / len(job.prompts))
            webui_picture(job, prompt, job.seed + i, capturing)
        return capturing.samples

    return capture


def webui_sample_image(job: SamplingJob):
    """The report's picture: the first prompt, same seed, with torch or with the recipe."""
    torch_unet = shared.sd_model.model.diffusion_model
    return lambda unet: webui_picture(job, job.prompts[0], job.seed, None if unet is torch_unet else unet)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """Picture sizes as typed ("512x512, 768x512"), width x height, sides multiples of 64."""
    sizes = []
    for part in str(text or "").replace(";", ",").split(","):
        part = part.strip().lower()
        if not part:
            continue
        try:
            width, height = (int(v) for v in part.split("x"))
        except ValueError as err:
            raise ValueError(f"sizes are WIDTHxHEIGHT, e.g. 512x768; got {part!r}") from err
        if width <= 0 or height <= 0 or width % 64 or height % 64:
            raise ValueError(f"{part}: sides must be positive multiples of 64 px")
        sizes.append((width, height))
    return sizes


def shapes_to_prepare(sizes_text: str, batch: int, chunks: int) -> list[tuple[int, int, int, int]]:
    """UNet shapes (batch, latent h, latent w, tokens) to compile ahead: batch x2 (cond + uncond)."""
    return [(2 * int(batch), h // 8, w // 8, 77 * int(chunks)) for w, h in parse_sizes(sizes_text)]


def recipe_entries_html() -> str:
    try:
        return report.entries_html(optimize.recipe_entries(cache_root()))
    except OSError as err:
        return f"<p>Cannot read the cache folder: {html.escape(str(err))}</p>"


def entry_folder(entry: cache.CacheEntry) -> str:
    """`<checkpoint folder>/<recipe folder>`: unique in the cache (a recipe's folder name alone
    repeats across checkpoints)."""
    return f"{entry.path.parent.name}/{entry.path.name}"


def entry_choices() -> list[str]:
    try:
        return [
            f"{e.manifest['checkpoint']['name']} | {report.entry_label(e)} | {entry_folder(e)}"
            for e in optimize.recipe_entries(cache_root())
        ]
    except OSError:
        return []


def delete_entry(choice: str) -> str:
    """Delete the chosen entry (giving it back first if it serves) and refresh the SD Unet list."""
    folder = str(choice or "").rsplit("|", 1)[-1].strip()
    matches = [e for e in optimize.recipe_entries(cache_root()) if entry_folder(e) == folder]
    if not matches:
        return f"<p>Nothing to delete: {html.escape(str(choice))} is not in the cache.</p>"
    serving = current_openvino_unet()
    if serving is not None and serving.entry is not None and serving.entry.path == matches[0].path:
        sd_unet.apply_unet("None")  # it is in use: give it back first
    cache.delete(matches[0].path)
    sd_unet.list_unets()
    return f"<p>Deleted {html.escape(matches[0].path.name)}.</p>"


# The Optimize form's fields and defaults, shared by the tab and the API route.
OPTIMIZE_DEFAULTS = {
    "int8": "hybrid",
    "smooth_quant": False,
    "tome": 0.0,
    "prune": "off",
    "prune_ratio": 20,  # percent
    "precision": "f32",
    "samples": DEFAULT_SAMPLES,
    "prompts_text": "",  # empty: the first four shipped prompts
    "sampler": "Euler",
    "calib_size": "256x256",
    "calib_steps": 8,
    "sizes_text": "512x512",
    "batch": 1,
    "chunks": 1,
    "device": "",  # empty: Settings → OpenVINO device
    "measure_size": "512x512",
    "compare_picture": True,
}


class OptimizeRequest(NamedTuple):
    recipe: Recipe
    job: SamplingJob
    shapes: list
    measure: optimize.Measure
    device: str
    compare_picture: bool


def parse_request(fields: dict) -> OptimizeRequest:
    """The form's values → what Optimize needs; ValueError with a readable message if wrong."""
    unknown = set(fields) - set(OPTIMIZE_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown Optimize fields: {sorted(unknown)}")
    f = {**OPTIMIZE_DEFAULTS, **fields}
    recipe = Recipe(
        int8=str(f["int8"]),
        tome=float(f["tome"]),
        prune=str(f["prune"]),
        prune_ratio=float(f["prune_ratio"]) / 100,
        precision=str(f["precision"]),
        smooth_quant=bool(f["smooth_quant"]),
        samples=int(f["samples"]),
    )
    prompts = tuple(line.strip() for line in str(f["prompts_text"] or "").splitlines() if line.strip())
    (calib_w, calib_h), (measure_w, measure_h) = (
        parse_sizes(f["calib_size"])[:1] + parse_sizes(f["measure_size"])[:1]
    )
    batch, chunks = int(f["batch"]), int(f["chunks"])
    return OptimizeRequest(
        recipe,
        SamplingJob(
            prompts or tuple(default_prompts()[:4]),
            str(f["sampler"]),
            calib_w,
            calib_h,
            int(f["calib_steps"]),
        ),
        shapes_to_prepare(f["sizes_text"], batch, chunks),
        optimize.Measure(measure_w, measure_h, batch=2 * batch, tokens=77 * chunks),
        str(f["device"] or opt("sd_ov_device")),
        bool(f["compare_picture"]),
    )


def optimize_loaded_checkpoint(request: OptimizeRequest, progress) -> cache.CacheEntry:
    """Optimize the loaded checkpoint's UNet as one webui job; the new option is listed at once."""
    model = shared.sd_model
    describe(model.model.diffusion_model)
    lock = getattr(call_queue, "queue_lock", None) or contextlib.nullcontext()
    with lock:  # no txt2img job runs beside Optimize
        shared.state.begin(job="sd_ov_optimize")
        try:
            sd_unet.apply_unet("None")  # a serving OpenVINO UNet gives its memory back first
            name, sha256 = checkpoint_identity(model.sd_checkpoint_info)
            with unet_calls_to(None):
                entry = optimize.optimize(
                    model.model.diffusion_model,
                    cache_root(),
                    name,
                    sha256,
                    request.recipe,
                    webui_capture(request.job),
                    device=request.device,
                    shapes=request.shapes,
                    measure=request.measure,
                    sample_image=webui_sample_image(request.job) if request.compare_picture else None,
                    progress=progress,
                )
            sd_unet.list_unets()
            return entry
        finally:
            shared.state.end()


def run_optimize(*values, progress_bar=None) -> tuple[str, str]:
    """The Optimize button (values in OPTIMIZE_DEFAULTS' order): (report HTML, entries HTML)."""
    try:
        request = parse_request(dict(zip(OPTIMIZE_DEFAULTS, values, strict=True)))
    except (ValueError, IndexError, SdOvError) as err:
        return f"<p style='color:#c33'>Cannot optimize: {html.escape(str(err))}</p>", recipe_entries_html()

    def progress(message: str, fraction: float) -> None:
        if progress_bar is not None:
            progress_bar(fraction, desc=message)
        webui_progress(message, fraction)

    try:
        entry = optimize_loaded_checkpoint(request, progress)
        label = OpenVINOUnetOption(shared.sd_model.sd_checkpoint_info, request.recipe).label
        message = report.report_html(entry) + (
            f"<br>Choose <b>{html.escape(label)}</b> in Settings → SD Unet (refresh its list) to use it."
        )
    except Cancelled:
        message = "<p>Optimize cancelled: nothing was added to the cache.</p>"
    except Exception as err:  # the webui must survive whatever goes wrong
        log.exception("sd-ov: Optimize failed")
        message = f"<p style='color:#c33'>Optimize failed: {html.escape(f'{type(err).__name__}: {err}')}</p>"
    return message, recipe_entries_html()


def api_optimize(payload: dict) -> dict:
    """POST /sd-ov/v1/optimize: the tab's fields as JSON → the option's label and the report."""
    try:
        request = parse_request(dict(payload or {}))
        entry = optimize_loaded_checkpoint(request, webui_progress)
    except Cancelled as err:
        return {"error": f"cancelled: {err}"}
    except Exception as err:  # reported to the caller; the webui keeps running
        log.exception("sd-ov: Optimize (API) failed")
        return {"error": f"{type(err).__name__}: {err}"}
    label = OpenVINOUnetOption(shared.sd_model.sd_checkpoint_info, request.recipe).label
    return {"label": label, "entry": str(entry.path), "report": entry.manifest.get("report", {})}


def api_recipes() -> dict:
    """GET /sd-ov/v1/recipes: the optimized UNets in the cache, with their reports."""
    return {
        "recipes": [
            {
                "checkpoint": e.manifest["checkpoint"]["name"],
                "label": report.entry_label(e),
                "entry": str(e.path),
                "report": e.manifest.get("report", {}),
            }
            for e in optimize.recipe_entries(cache_root())
        ]
    }


def on_app_started(_demo, app) -> None:
    app.add_api_route("/sd-ov/v1/optimize", api_optimize, methods=["POST"])
    app.add_api_route("/sd-ov/v1/recipes", api_recipes, methods=["GET"])


def sampler_choices() -> list[str]:
    try:
        from modules import sd_samplers

        return list(sd_samplers.visible_sampler_names())
    except Exception:  # an older webui: Euler is always there
        return ["Euler"]


def slider(label: str, minimum, maximum, value, step, elem_id: str):
    import gradio as gr

    return gr.Slider(minimum=minimum, maximum=maximum, value=value, step=step, label=label, elem_id=elem_id)


def on_ui_tabs():
    import gradio as gr

    D = OPTIMIZE_DEFAULTS

    with gr.Blocks(analytics_enabled=False) as tab:
        gr.HTML(
            "<p>Optimize the loaded checkpoint's UNet into an OpenVINO recipe. The result appears in "
            "Settings → SD Unet as <code>[OpenVINO &lt;recipe&gt;] &lt;checkpoint&gt;</code>.</p>"
        )
        with gr.Row():
            with gr.Column():
                int8 = gr.Radio(choices=list(INT8_MODES), value=D["int8"], label="INT8", elem_id="sd_ov_int8")
                smooth_quant = gr.Checkbox(
                    value=D["smooth_quant"], label="SmoothQuant (MatMuls)", elem_id="sd_ov_sq"
                )
                tome = slider("Token merging ratio", 0.0, MAX_RATIO, D["tome"], 0.05, "sd_ov_tome")
                prune = gr.Radio(
                    choices=list(PRUNE_MODES), value=D["prune"], label="Pruning", elem_id="sd_ov_prune"
                )
                prune_ratio = slider("Pruning %", 0, 80, D["prune_ratio"], 5, "sd_ov_prune_ratio")
                precision = gr.Radio(
                    choices=list(PRECISIONS),
                    value=D["precision"],
                    label="Inference precision",
                    elem_id="sd_ov_recipe_precision",
                )
                device = gr.Dropdown(
                    choices=device_choices(),
                    value=lambda: opt("sd_ov_device"),
                    label="Device",
                    elem_id="sd_ov_recipe_device",
                )
            with gr.Column():
                prompts = gr.Textbox(
                    value="\n".join(default_prompts()[:4]),
                    lines=6,
                    label="Calibration prompts (one per line)",
                    elem_id="sd_ov_prompts",
                )
                with gr.Row():
                    sampler = gr.Dropdown(
                        choices=sampler_choices(),
                        value=D["sampler"],
                        label="Sampler",
                        elem_id="sd_ov_sampler",
                    )
                    calib_size = gr.Textbox(
                        value=D["calib_size"], label="Calibration size", elem_id="sd_ov_calib_size"
                    )
                    calib_steps = slider("Calibration steps", 2, 30, D["calib_steps"], 1, "sd_ov_calib_steps")
                    samples = slider("Calibration samples", 1, 64, D["samples"], 1, "sd_ov_samples")
                with gr.Row():
                    sizes = gr.Textbox(
                        value=D["sizes_text"], label="Sizes to compile ahead", elem_id="sd_ov_sizes"
                    )
                    batch = slider("Batch size", 1, 8, D["batch"], 1, "sd_ov_batch")
                    chunks = slider("Prompt chunks (75 tokens)", 1, 4, D["chunks"], 1, "sd_ov_chunks")
                with gr.Row():
                    measure_size = gr.Textbox(
                        value=D["measure_size"], label="Measure at", elem_id="sd_ov_measure_size"
                    )
                    compare = gr.Checkbox(
                        value=D["compare_picture"],
                        label="Compare a sample picture with torch",
                        elem_id="sd_ov_compare",
                    )
        with gr.Row():
            start = gr.Button(value="Optimize", variant="primary", elem_id="sd_ov_optimize")
            cancel = gr.Button(value="Cancel", elem_id="sd_ov_cancel")
        result = gr.HTML(elem_id="sd_ov_report")
        entries = gr.HTML(value=recipe_entries_html, elem_id="sd_ov_entries")
        with gr.Row():
            chosen = gr.Dropdown(
                choices=entry_choices(), label="Optimized UNets", elem_id="sd_ov_entry_choice"
            )
            refresh = gr.Button(value="Refresh", elem_id="sd_ov_refresh_entries")
            delete = gr.Button(value="Delete", elem_id="sd_ov_delete")

        def optimize_click(*values, progress=gr.Progress()):
            return run_optimize(*values, progress_bar=progress)

        inputs = [int8, smooth_quant, tome, prune, prune_ratio, precision, samples, prompts, sampler]
        inputs += [calib_size, calib_steps, sizes, batch, chunks, device, measure_size, compare]
        start.click(fn=optimize_click, inputs=inputs, outputs=[result, entries])
        cancel.click(fn=lambda: shared.state.interrupt(), inputs=[], outputs=[])
        refresh.click(
            fn=lambda: (recipe_entries_html(), gr.update(choices=entry_choices())),
            inputs=[],
            outputs=[entries, chosen],
        )
        delete.click(
            fn=lambda choice: (
                delete_entry(choice),
                recipe_entries_html(),
                gr.update(choices=entry_choices(), value=None),
            ),
            inputs=[chosen],
            outputs=[result, entries, chosen],
        )
    return [(tab, "OpenVINO", "sd_ov_tab")]


script_callbacks.on_list_unets(list_unets)
script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_script_unloaded(on_script_unloaded)
script_callbacks.on_ui_tabs(on_ui_tabs)
script_callbacks.on_app_started(on_app_started)
