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
    Calibration,
    Cancelled,
    CapturingUNet,
    OptimizeRequest,
    SdOvError,
    optimize,
    optimize_with_deepcache,
    parse_optimize_form,
    report,
    trim_heap,
)

from .int8_vae import DecodedLatents, Optimized, int8_vae_decoder, vae_decoder_line
from .offload import WebuiWeights, unet_weights
from .options import OpenVINOUnetOption, checkpoint_identity
from .progress import cancellable_progress
from .settings import cache_root, offload_mode, opt
from .text_encoder import HOST_CLASSES, text_encoder_slots, text_encoder_weights
from .torch_unet import unet_calls_to

log = logging.getLogger("sd_ov")


class Busy(SdOvError):
    """Another job (a picture or an Optimize) holds the webui's queue."""


@contextlib.contextmanager
def before_decoding(first_stage, hook, decoded: DecodedLatents | None = None):
    """`hook()` runs when the picture's latents are about to be decoded (the VAE's `decode`, which
    the webui's decode_first_stage calls), `decoded(z, picture)` after; the VAE's own method is
    back afterwards."""
    if (hook is None and decoded is None) or first_stage is None:
        yield
        return
    saved = vars(first_stage).get("decode")
    own = first_stage.decode

    def decode(*args, **kwargs):
        if hook is not None:
            hook()
        out = own(*args, **kwargs)
        if decoded is not None and args and not kwargs:
            decoded(args[0], out)
        return out

    first_stage.decode = decode
    try:
        yield
    finally:
        if saved is None:
            vars(first_stage).pop("decode", None)
        else:
            first_stage.decode = saved


def webui_picture(calib: Calibration, prompt: str, seed: int, unet_fn=None, before_decode=None, decoded=None):
    """One txt2img picture (numpy RGB) made by the webui itself, its UNet calls served by `unet_fn`
    (torch when None), `before_decode()` called when sampling is done and `decoded(z, picture)`
    given the VAE's input and output. The webui's token merging is off: it would change only the
    torch picture."""
    import numpy as np
    from modules import processing

    p = processing.StableDiffusionProcessingTxt2Img(
        sd_model=shared.sd_model,
        prompt=prompt,
        negative_prompt="",
        seed=seed,
        sampler_name=calib.sampler,
        steps=calib.steps,
        width=calib.width,
        height=calib.height,
        cfg_scale=7.0,
        batch_size=1,
        n_iter=1,
        do_not_save_samples=True,
        do_not_save_grid=True,
        override_settings={"sd_unet": "None", "token_merging_ratio": 0},
        override_settings_restore_afterwards=True,
    )
    with (
        unet_calls_to(unet_fn),
        before_decoding(getattr(shared.sd_model, "first_stage_model", None), before_decode, decoded),
    ):
        processed = processing.process_images(p)
    if not processed.images or shared.state.interrupted:
        raise Cancelled("the sampler was interrupted")
    return np.asarray(processed.images[0].convert("RGB"))


class PromptEncoders:
    """The text encoders' torch weights while Optimize runs: needed only while a picture encodes
    its prompts, so they leave memory for the rest (the export, the calibration UNet's compile
    and sampling, NNCF). SDXL's are 3.3 GB in f32: measured in the webui, Optimize peaked at 18.6
    GiB during the export and 17.4 GiB during calibration with them resident (AMD EPYC, 2026-12-02).
    Nothing leaves in the `none` memory mode."""

    def __init__(self, model, progress) -> None:
        keep = offload_mode() == "none"
        filename = model.sd_checkpoint_info.filename
        self.progress = progress
        self.weights = [
            text_encoder_weights(
                module, prefix, filename, f"torch {HOST_CLASSES[type(module).__name__][1]} text encoder"
            )
            for module, prefix in ([] if keep else text_encoder_slots(model))
        ]

    def release(self) -> None:
        for weights in self.weights:
            weights.release(self.progress)

    def ensure(self) -> None:
        for weights in self.weights:
            weights.ensure(self.progress)

    def released_at_first_call(self, unet_fn):
        """`unet_fn` that, at its first call (the prompts are encoded by then), frees the text
        encoders' weights again."""
        first = [True]

        def call(*args, **kwargs):
            if first[0]:
                first[0] = False
                self.release()
            return unet_fn(*args, **kwargs)

        return call


def webui_capture(
    calib: Calibration, encoders: PromptEncoders | None = None, decoded: DecodedLatents | None = None
):
    """Calibration: a picture per prompt with the UNet Optimize hands over (INT8 weights); every
    UNet call's inputs are kept (and, with `decoded`, what the VAE decoded)."""

    def capture(runtime, progress):
        capturing = CapturingUNet(runtime)
        for i, prompt in enumerate(calib.prompts):
            progress(
                f"calibration picture {i + 1}/{len(calib.prompts)}: {prompt[:60]}", i / len(calib.prompts)
            )
            unet_fn = capturing
            if encoders is not None:
                encoders.ensure()
                unet_fn = encoders.released_at_first_call(capturing)
            # the UNet's buffers go before the VAE decodes (SDXL: both at once set the peak)
            release = getattr(runtime, "release_memory", None)
            webui_picture(calib, prompt, calib.seed + i, unet_fn, release, decoded)
        return capturing.samples

    return capture


def webui_sample_image(calib: Calibration, encoders: PromptEncoders | None = None):
    """The report's picture: the first prompt, same seed, with torch or with the recipe."""
    torch_unet = shared.sd_model.model.diffusion_model

    def picture(unet):
        if encoders is not None:
            encoders.ensure()
        try:
            return webui_picture(calib, calib.prompts[0], calib.seed, None if unet is torch_unet else unet)
        finally:
            if encoders is not None:
                encoders.release()

    return picture


def parse_request(values: dict) -> OptimizeRequest:
    """The form's values → what Optimize needs; ValueError (or a device error) if wrong."""
    sdxl = bool(getattr(shared.sd_model, "is_sdxl", False))  # a preset gives its SDXL recipe
    return parse_optimize_form(values, default_device=str(opt("sd_ov_device")), sdxl=sdxl)


def optimize_loaded_checkpoint(request: OptimizeRequest, progress, wait: bool = True) -> Optimized:
    """Optimize as one webui job (no picture runs beside it); the new option is listed at once.
    With `wait=False`, a busy queue raises Busy instead of waiting. Returns the recipe's entry
    (its DeepCache pair and INT8 VAE decoder, when asked for, are made in the same job, after it)."""
    # Refuses what Optimize can't make (e.g. SDXL token merging) before waiting for the queue.
    optimize.optimizable(shared.sd_model.model.diffusion_model, request.recipe)
    lock = getattr(call_queue, "queue_lock", None) or contextlib.nullcontext()
    if isinstance(lock, contextlib.nullcontext) or lock.acquire(blocking=wait):
        try:
            return _optimize_as_job(request, progress)
        finally:
            if not isinstance(lock, contextlib.nullcontext):
                lock.release()
    raise Busy("a job is running: try again when it has finished")


def optimize_weights(model) -> WebuiWeights | None:
    """The torch UNet's weights, freed while calibration and NNCF run (Settings → memory: not
    when the user keeps them)."""
    if offload_mode() == "none":
        return None
    return unet_weights(model.model.diffusion_model, model.sd_checkpoint_info.filename)


def _optimize_as_job(request: OptimizeRequest, progress) -> Optimized:
    model = shared.sd_model
    shared.state.begin(job="sd_ov_optimize")
    try:
        sd_unet.apply_unet("None")  # a serving OpenVINO UNet gives its memory back first
        name, sha256 = checkpoint_identity(model.sd_checkpoint_info)
        calib = request.calibration
        encoders = PromptEncoders(model, progress)
        encoders.release()
        gc.collect()
        trim_heap()  # what a torch job before left on the heap goes back too (SDXL: ~0.5 GiB)
        decoded = DecodedLatents() if request.vae_int8 else None
        pair_notes: list[str] = []
        with unet_calls_to(None), contextlib.ExitStack() as back:
            back.callback(encoders.ensure)  # the webui's own encoders are whole again at the end
            entry, *_pair = optimize_with_deepcache(
                model.model.diffusion_model,
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
                torch_weights=optimize_weights(model),
                cache_compiled=bool(opt("sd_ov_cache_compiled")),
                keep_fp32=False,  # the FP32 IR it starts from stays only if it was there before
                pair_failed=lambda err: pair_notes.append(str(err)),  # the recipe is made: keep it
            )
        sd_unet.list_unets()
        made = Optimized(entry, pair=_pair[0] if _pair else None, pair_note="; ".join(pair_notes))
        if decoded is not None:
            int8_vae_decoder(made, model, name, sha256, decoded, request.device, progress)
        return made
    finally:
        shared.state.end()


def option_label(request: OptimizeRequest) -> str:
    return OpenVINOUnetOption(shared.sd_model.sd_checkpoint_info, request.recipe).label


def run_optimize(values: dict, progress_bar=None) -> str:
    """The tab's Optimize button: the report, or why nothing was made (as HTML)."""
    try:
        request = parse_request(values)
    except (ValueError, SdOvError) as err:
        return f"<p style='color:#c33'>Cannot optimize: {html.escape(str(err))}</p>"

    def progress(message: str, fraction: float) -> None:
        if progress_bar is not None:
            progress_bar(fraction, desc=message)
        cancellable_progress(message, fraction)

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
    label = option_label(request)
    advice = f"<br>Choose <b>{html.escape(label)}</b> in Settings → SD Unet (refresh its list) to use it."
    preset = PRESETS.get(request.preset)
    if preset is not None:
        advice += (
            f" The {preset.name} preset runs it with DeepCache {html.escape(preset.deepcache.infotext())}: "
            "set that in the OpenVINO accordion or Settings → OpenVINO → DeepCache."
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
