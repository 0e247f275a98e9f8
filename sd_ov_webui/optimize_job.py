"""Optimize the loaded checkpoint's UNet as one webui job: calibration pictures and the report's
sample picture are made by the webui's own sampler and prompts, with the UNet served by OpenVINO."""

from __future__ import annotations

import contextlib
import gc
import html
import logging

from modules import call_queue, sd_unet, shared

from sd_ov import (
    PRESETS,
    Cancelled,
    OptimizeRequest,
    SdOvError,
    cache,
    optimizable,
    optimize_with_deepcache,
    parse_optimize_form,
    report,
    trim_heap,
)

from . import host
from .calibration_pictures import PromptEncoders, webui_capture, webui_sample_image
from .checkpoints import checkpoint_identity
from .int8_vae import DecodedLatents, Optimized, int8_vae_decoder, vae_decoder_line
from .optimize_source import loaded_model, model_loaded, optimize_source, unet_to_check
from .options import OpenVINOUnetOption
from .progress import with_progress_bar
from .settings import cache_root, opt
from .torch_unet import unet_calls_to

log = logging.getLogger("sd_ov")


class Busy(SdOvError):
    """Another job (a picture or an Optimize) holds the webui's queue."""


def parse_request(values: dict) -> OptimizeRequest:
    """The form's values → what Optimize needs; ValueError (or a device error) if wrong."""
    sdxl = bool(getattr(shared.sd_model, "is_sdxl", False))  # a preset gives its SDXL recipe
    return parse_optimize_form(values, default_device=str(opt("sd_ov_device")), sdxl=sdxl)


def optimize_loaded_checkpoint(request: OptimizeRequest, progress, wait: bool = True) -> Optimized:
    """Optimize as one webui job (no picture runs beside it); the new option is listed at once.
    With `wait=False`, a busy queue raises Busy instead of waiting. Returns the recipe's entry
    (its DeepCache pair and INT8 VAE decoder, when asked for, are made in the same job, after it)."""
    # Refuses what Optimize can't make (e.g. SDXL token merging) before waiting for the queue
    # (Forge before its first job: once its model is loaded, in the job).
    if model_loaded():
        optimizable(unet_to_check(shared.sd_model), request.recipe)
    lock = getattr(call_queue, "queue_lock", None) or contextlib.nullcontext()
    if isinstance(lock, contextlib.nullcontext) or lock.acquire(blocking=wait):
        try:
            return _optimize_as_job(request, progress)
        finally:
            if not isinstance(lock, contextlib.nullcontext):
                lock.release()
    raise Busy("a job is running: try again when it has finished")


def _optimize_as_job(request: OptimizeRequest, progress) -> Optimized:
    model = loaded_model()
    optimizable(unet_to_check(model), request.recipe)
    shared.state.begin(job="sd_ov_optimize")
    try:
        sd_unet.apply_unet("None")  # a serving OpenVINO UNet gives its memory back first
        name, sha256 = checkpoint_identity(model.sd_checkpoint_info)
        calib = request.calibration
        encoders = PromptEncoders(model, progress)
        encoders.release()
        gc.collect()
        trim_heap()  # what a torch job before left on the heap goes back too (SDXL: ~0.5 GiB)
        # Forge's VAE decodes through its own model object (forge_vae.py): no INT8 decoder made there yet
        decoded = DecodedLatents() if request.vae_int8 and not host.is_forge() else None
        pair_notes: list[str] = []
        with (
            unet_calls_to(None),
            optimize_source(model, progress) as (unet, torch_weights),
            contextlib.ExitStack() as back,
        ):
            back.callback(encoders.ensure)  # the webui's own encoders are whole again at the end
            entry, *_pair = optimize_with_deepcache(
                unet,
                cache_root(),
                name,
                sha256,
                request.recipe,
                webui_capture(calib, encoders, decoded),
                deepcache_branch=request.deepcache_branch,
                preset=request.preset,
                device=request.device,
                shapes=request.shapes,
                measure=request.measure(),
                sample_image=webui_sample_image(calib, encoders) if request.compare_picture else None,
                progress=progress,
                torch_weights=torch_weights,
                cache_compiled=bool(opt("sd_ov_cache_compiled")),
                keep_fp32=False,  # the FP32 IR it starts from stays only if it was there before
                pair_failed=lambda err: pair_notes.append(str(err)),  # the recipe is made: keep it
            )
        sd_unet.list_unets()
        made = Optimized(entry, pair=_pair[0] if _pair else None, pair_note="; ".join(pair_notes))
        made.label, made.previous_unet = use_new_recipe(model, entry)
        if decoded is not None:
            int8_vae_decoder(made, model, name, sha256, decoded, request.device, progress)
        elif request.vae_int8:
            made.vae_decoder_note = "not made in Forge yet: its VAE decodes on OpenVINO at float precision"
        return made
    finally:
        shared.state.end()


def use_new_recipe(model, entry: cache.CacheEntry) -> tuple[str, str | None]:
    """(the new recipe's SD Unet label, the SD Unet setting it replaced as the current one; None
    where it was not made current: Settings → OpenVINO → "After Optimize, use the new recipe" off).
    Set and saved as Settings → Apply does, so the next job, and the next start, run it."""
    label = OpenVINOUnetOption(model.sd_checkpoint_info, entry.manifest.recipe).label
    if not opt("sd_ov_use_new_recipe"):
        return label, None
    previous = str(getattr(shared.opts, "sd_unet", "Automatic") or "Automatic")
    set_sd_unet(label)
    return label, previous


def set_sd_unet(value: str) -> None:
    """Settings → SD Unet = `value`, saved to the webui's config like Settings → Apply."""
    shared.opts.set("sd_unet", value)
    filename = getattr(shared, "config_filename", None)
    if filename and hasattr(shared.opts, "save"):
        shared.opts.save(filename)


def option_label(request: OptimizeRequest) -> str:
    return OpenVINOUnetOption(shared.sd_model.sd_checkpoint_info, request.recipe).label


# The SD Unet setting the tab's last Optimize replaced, for its "Back to ..." button.
LAST_SWITCH: dict[str, str | None] = {"previous": None}


def run_optimize(values: dict, progress_bar=None) -> str:
    """The tab's Optimize button: the report, or why nothing was made (as HTML)."""
    try:
        request = parse_request(values)
    except (ValueError, SdOvError) as err:
        return f"<p style='color:#c33'>Cannot optimize: {html.escape(str(err))}</p>"

    progress = with_progress_bar(progress_bar)

    try:
        made = optimize_loaded_checkpoint(request, progress)
    except Cancelled:
        return "<p>Optimize cancelled: nothing was added to the cache.</p>"
    except MemoryError:
        log.exception("sd-ov: Optimize ran out of memory")
        return "<p style='color:#c33'>Optimize ran out of memory: nothing was added to the cache.</p>"
    except Exception as err:  # the webui must survive whatever goes wrong
        log.exception("sd-ov: Optimize failed")
        return f"<p style='color:#c33'>Optimize failed: {html.escape(f'{type(err).__name__}: {err}')}</p>"
    LAST_SWITCH["previous"] = made.previous_unet
    label = html.escape(made.label or option_label(request))
    if made.previous_unet is not None:
        advice = (
            f"<br><b>{label}</b> is now the current SD Unet (it was {html.escape(made.previous_unet)}): "
            "the next picture runs it."
        )
    else:
        advice = f"<br>Choose <b>{label}</b> in Settings → SD Unet to use it."
    preset = PRESETS.get(request.preset)
    if preset is not None:
        schedule = html.escape(preset.deepcache.infotext())
        advice += (
            f" It runs with the {preset.name} preset's DeepCache ({schedule}) while the accordion's "
            "DeepCache interval is -1 (the recipe's schedule, the default)."
        )
    elif made.pair is not None:
        advice += (
            f" Its DeepCache pair (branch {request.deepcache_branch}) serves a job with DeepCache on at "
            "that branch (OpenVINO accordion)."
        )
    if made.pair_note:
        advice += f"<br>No DeepCache pair was made: {html.escape(made.pair_note)}. It runs without DeepCache."
    if request.vae_int8:
        advice += "<br>" + html.escape(vae_decoder_line(made))
    return report.report_html(made.entry) + advice
