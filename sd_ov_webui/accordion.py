"""The OpenVINO accordion in txt2img/img2img: a per-job switch, DeepCache, and what will run."""

from __future__ import annotations

import html

from modules import sd_models, sd_unet, shared

from sd_ov import (
    MAX_DEEPCACHE_BRANCH,
    SCHEDULES,
    SdOvError,
    cache,
    optimize_defaults,
    ov_core,
    preset_seconds,
    recipe_schedule,
    run_summary,
)

from .job import INFOTEXT_KEY, RECIPES, job_deepcache, pasted_deepcache, token_merging_note
from .optimize_job import run_optimize
from .options import OpenVINOUnetOption, current_openvino_unet
from .progress import time_left
from .settings import cache_root, opt, runtime_settings

# The accordion's controls, in the order the webui passes their values to the hooks.
CONTROLS = ("enabled", "interval", "branch", "schedule")


def build(script, is_img2img: bool) -> list:
    import gradio as gr

    tab = "img2img" if is_img2img else "txt2img"
    with gr.Accordion("OpenVINO", open=False, elem_id=f"sd_ov_{tab}_accordion"):
        enabled = gr.Checkbox(
            label="Use the OpenVINO UNet for this job", value=True, elem_id=f"sd_ov_{tab}_enabled"
        )
        with gr.Row():
            interval = gr.Slider(
                minimum=-1,
                maximum=10,
                step=1,
                label="DeepCache interval (-1: the recipe's schedule, 0: off)",
                value=lambda: int(opt("sd_ov_deepcache_every")),
                elem_id=f"sd_ov_{tab}_deepcache_interval",
            )
            branch = gr.Slider(
                minimum=0,
                maximum=MAX_DEEPCACHE_BRANCH,
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
        # the first Optimize, one click away while the loaded checkpoint has no recipe (the
        # buttons as the page is built; after an Optimize or a Refresh, as the cache is then)
        shown = bool(invite_html())
        with gr.Row():
            invite = gr.HTML(value=invite_html, elem_id=f"sd_ov_{tab}_invite")
            make = gr.Button(
                value="Make the fastest recipe", visible=shown, elem_id=f"sd_ov_{tab}_make_fastest"
            )
            stop = gr.Button(value="Cancel", visible=shown, elem_id=f"sd_ov_{tab}_cancel_optimize")
        made = gr.HTML(elem_id=f"sd_ov_{tab}_made")

        def after() -> tuple:
            """The status and the invite again; the buttons only beside an invite."""
            line = invite_html()
            return line, status_html(), gr.update(visible=bool(line)), gr.update(visible=bool(line))

        refresh.click(fn=after, inputs=[], outputs=[invite, status, make, stop])
        make.click(
            fn=lambda progress=gr.Progress(): (make_fastest(progress), *after()),
            inputs=[],
            outputs=[made, invite, status, make, stop],
        )
        stop.click(fn=lambda: shared.state.interrupt(), inputs=[], outputs=[])
    # Pasting an OpenVINO picture's infotext turns it on and restores its DeepCache choice;
    # other infotexts leave the controls alone.
    script.infotext_fields = [
        (enabled, lambda params: True if INFOTEXT_KEY in params else None),
        (interval, lambda params: pasted_deepcache(params, "interval")),
        (branch, lambda params: pasted_deepcache(params, "branch")),
        (schedule, lambda params: pasted_deepcache(params, "schedule")),
    ]
    script.paste_field_names = []
    return [enabled, interval, branch, schedule]


def loaded_checkpoint_info():
    """The loaded checkpoint's info; in Forge before its first job, the one it will load."""
    info = getattr(getattr(shared, "sd_model", None), "sd_checkpoint_info", None)
    if info is None:
        info = sd_models.get_closet_checkpoint_match(
            str(getattr(shared.opts, "sd_model_checkpoint", "") or "")
        )
    return info


def invite_html() -> str:
    """While the loaded checkpoint has no recipe: the one line that offers the fastest preset's
    Optimize, with its time on this machine (`preset_seconds`: from Optimize runs or FP32 exports
    measured here)."""
    info = loaded_checkpoint_info()
    if info is None:
        return ""
    entries = cache.list_entries(cache_root())
    own = [
        e for e in entries if e.manifest.checkpoint_name == info.model_name and e.manifest.component == "unet"
    ]
    if any(not e.manifest.recipe.is_plain for e in own):
        return ""  # it has a recipe: Optimize lives in the OpenVINO tab
    weights = next((e.manifest.unet.parameters for e in own if e.manifest.unet is not None), None)
    seconds = preset_seconds(entries, weights) if weights else None
    about = f"about {time_left(seconds)} here" if seconds else "its time is known after the first picture"
    return (
        f"Make the fastest recipe for <b>{html.escape(info.model_name)}</b> ({about}): INT8 + token "
        "merging with its DeepCache pair, made from your checkpoint and used at once."
    )


def make_fastest(progress_bar=None) -> str:
    """The accordion's button: the fastest preset's Optimize with the form's defaults (the tab's
    progress and report; the recipe becomes the current SD Unet)."""
    return run_optimize({**optimize_defaults(), "preset": "fastest"}, progress_bar=progress_bar)


def option_for(info, selected: str):
    """The SD Unet option `selected` picks for checkpoint `info` (the webui's own rule, without
    reading the loaded model: Forge's is a stand-in until its first job)."""
    if selected == "None":
        return None
    if selected == "Automatic":
        return next((o for o in sd_unet.unet_options if o.model_name == info.model_name), None)
    return next((o for o in sd_unet.unet_options if o.label == selected), None)


def status_html() -> str:
    """What the next job will run: device, recipe, and whether the UNet is cached already."""
    loaded = getattr(getattr(shared, "sd_model", None), "sd_checkpoint_info", None)
    info = loaded_checkpoint_info()
    selected = getattr(shared.opts, "sd_unet", "Automatic")
    lines = [f"SD Unet setting: <b>{html.escape(str(selected))}</b>"]
    if loaded is None and info is not None:  # Forge loads the chosen checkpoint at its first job
        lines.append(f"Checkpoint: {html.escape(info.model_name)} (loads at the first job)")
    option = option_for(info, str(selected)) if info is not None else None
    if not isinstance(option, OpenVINOUnetOption):
        lines.append(
            "The torch UNet will run (choose an [OpenVINO] option or Automatic in Settings → SD Unet)."
        )
        return "<br>".join(lines)
    deepcache, origin = accordion_deepcache(info, option)
    try:
        settings = runtime_settings().for_recipe(option.recipe)
        ov_core.resolve_device(settings.device)
        name = ov_core.device_full_name(settings.device.split(":")[0])
        device_text = f"{html.escape(settings.device)} ({html.escape(name)})"
        summary = run_summary(option.recipe, settings, deepcache)
    except (SdOvError, ValueError) as err:
        device_text = f"<span style='color:#c33'>{html.escape(str(err))}</span>"
        summary = option.recipe.name()
    lines += [
        f"Device: {device_text}",
        f"Recipe: {html.escape(summary)}{origin}",
        f"Cached: {html.escape(cached_text(info, option))}",
    ]
    if deepcache.enabled and not option.recipe.is_plain:
        pair = OpenVINOUnetOption(option.checkpoint_info, option.recipe.with_deepcache(deepcache.branch))
        lines.append(f"DeepCache pair: {html.escape(cached_text(info, pair))}")
    if getattr(option.checkpoint_info, "filename", None) != getattr(info, "filename", None):
        chosen, loaded = html.escape(option.model_name), html.escape(info.model_name)
        lines.append(f"Note: this option is for {chosen}; {loaded} is loaded, and its own UNet serves")
    note = token_merging_note(float(getattr(shared.opts, "token_merging_ratio", 0) or 0), option.recipe)
    if note:
        lines.append(f"Token merging: {html.escape(note)}")
    unet = current_openvino_unet()
    if unet is not None and unet.unavailable:
        lines.append(f"<span style='color:#c33'>Last problem: {html.escape(unet.unavailable)}</span>")
    return "<br>".join(lines)


def accordion_deepcache(info, option: OpenVINOUnetOption):
    """(the DeepCache schedule the next job asks for, " (the recipe's)" where it is the recipe's
    own: the accordion's interval -1 reads the recipe's manifest)."""
    asked = job_deepcache(
        opt("sd_ov_deepcache_every"), opt("sd_ov_deepcache_branch"), opt("sd_ov_deepcache_schedule")
    )
    if asked is not None:
        return asked, ""
    sha256 = getattr(info, "sha256", None)
    entry = None
    if sha256:
        entry, _ = cache.find(cache_root(), cache.EntryKey(info.model_name, sha256, option.recipe))
    schedule = recipe_schedule(entry.manifest if entry is not None else None)
    return schedule, f" ({RECIPES})" if schedule.enabled else ""


def cached_text(info, option: OpenVINOUnetOption) -> str:
    sha256 = getattr(info, "sha256", None)
    if not sha256:
        return "unknown (checkpoint hash not computed yet)"
    entry, problem = cache.find(cache_root(), cache.EntryKey(info.model_name, sha256, option.recipe))
    if entry:
        return "yes"
    if not option.recipe.is_plain:
        return "no: make it with Optimize in the OpenVINO tab"
    return "invalid, will be rebuilt" if problem else "no: exported on first use"
