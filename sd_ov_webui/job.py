"""The accordion script's hooks: a job's switch, its DeepCache choice, and its infotext.

The infotext is written from the job's own record (see `sd_ov.serve.record`): what OpenVINO served,
what torch served and why.
"""

from __future__ import annotations

import logging

from modules import sd_unet, shared

from sd_ov import DeepCacheConfig, Recipe

from .host import not_served_here
from .options import OpenVINOUnetOption, current_openvino_unet
from .recipe_switch import handing_over
from .settings import opt

log = logging.getLogger("sd_ov")

INFOTEXT_KEY = "OpenVINO"
DEEPCACHE_INFOTEXT_KEY = "OpenVINO DeepCache"
TOME_INFOTEXT_KEY = "OpenVINO token merging"
NOTE_INFOTEXT_KEY = "OpenVINO note"
VAE_INFOTEXT_KEY = "OpenVINO VAE"
TEXT_ENCODER_INFOTEXT_KEY = "OpenVINO text encoder"
LORA_INFOTEXT_KEY = "OpenVINO LoRA"
PRESET_INFOTEXT_KEY = "OpenVINO preset"
CONTROLNET_INFOTEXT_KEY = "OpenVINO ControlNet"
INFOTEXT_KEYS = (
    INFOTEXT_KEY,
    DEEPCACHE_INFOTEXT_KEY,
    TOME_INFOTEXT_KEY,
    NOTE_INFOTEXT_KEY,
    VAE_INFOTEXT_KEY,
    TEXT_ENCODER_INFOTEXT_KEY,
    LORA_INFOTEXT_KEY,
    PRESET_INFOTEXT_KEY,
    CONTROLNET_INFOTEXT_KEY,
)


RECIPES_SCHEDULE = -1  # the accordion's DeepCache interval that means "the recipe's schedule"
RECIPES = "the recipe's"


def job_deepcache(interval, branch, schedule) -> DeepCacheConfig | None:
    """The accordion's DeepCache choice; None: the recipe's own schedule (interval -1)."""
    if int(interval if interval is not None else 0) <= RECIPES_SCHEDULE:
        return None
    try:
        return DeepCacheConfig(int(interval or 0), int(branch or 0), str(schedule or "uniform"))
    except ValueError as err:
        log.warning("sd-ov: DeepCache off for this job: %s", err)
        return DeepCacheConfig()


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


def before_process(p, enabled: bool) -> None:
    """Runs before the webui applies override_settings: the cleanest per-job switch."""
    p.sd_ov_saved_unet_setting = None
    p.sd_ov_cfg1_skip = False
    if not enabled and getattr(shared.opts, "sd_unet", "Automatic") != "None":
        p.sd_ov_saved_unet_setting = shared.opts.sd_unet
        p.override_settings["sd_unet"] = "None"
    elif enabled and skips_uncond_at_cfg1(p):
        # the webui's own "Ignore negative prompt during early sampling" at 1, for this job only.
        # process_images stores (and restores after the job, in its `finally`) only overridden
        # options its data holds, and a config.json need not hold this one: without its default
        # in data the override would stay set for every later job, CFG 7 ones included.
        shared.opts.data.setdefault("skip_early_cond", shared.opts.get_default("skip_early_cond") or 0.0)
        p.override_settings["skip_early_cond"] = 1.0
        p.sd_ov_cfg1_skip = True


def skips_uncond_at_cfg1(p) -> bool:
    """At CFG 1 the webui's sampler still computes the negative prompt's half of every UNet call
    and then weighs it by zero (uncond + 1 * (cond - uncond)): half the UNet's work for nothing,
    e.g. LCM's 4 steps at CFG 1. The webui can skip that half itself ("Ignore negative prompt
    during early sampling" = 1 puts the prompt's prediction where the negative one would be: the
    same picture). Asked for an OpenVINO job only, where the user chose nothing for that setting,
    the webui restores it after the job, and the picture does not depend on the negative half:
    not with composable prompts (AND: their weights need not add up to 1) nor an edit model."""
    wanted = p.override_settings.get(
        "sd_ov_cfg1_skip_uncond", opt("sd_ov_cfg1_skip_uncond")
    )  # not applied yet
    if not bool(wanted) or float(getattr(p, "cfg_scale", 7.0)) != 1.0:
        return False
    if (
        not getattr(p, "override_settings_restore_afterwards", False)
        or "skip_early_cond" in p.override_settings
    ):
        return False
    if float(getattr(shared.opts, "skip_early_cond", 0.0) or 0.0) != 0.0:
        return False
    prompt = getattr(p, "prompt", "")
    prompts = prompt if isinstance(prompt, list) else [prompt]
    if any(" AND " in str(prompt) for prompt in prompts):
        return False
    if getattr(getattr(p, "sd_model", None), "cond_stage_key", "") == "edit":
        return False
    setting = p.override_settings.get("sd_unet", getattr(shared.opts, "sd_unet", "Automatic"))
    return isinstance(sd_unet.get_unet_option(setting), OpenVINOUnetOption)


def before_init(p) -> None:
    """The job's VAE and text encoders ready before `p.init`, where the webui encodes img2img's
    and inpainting's pictures: the webui applies the SD Unet only after `p.init`, so this applies
    it a step early (its own `apply_unet`, which then has nothing left to do), handing what does
    not depend on the recipe from one OpenVINO option to the next (recipe_switch.py). The notes of that
    preparation go into each batch's record (`p.sd_ov_companion_notes`; None: not prepared, the
    batch prepares them itself, e.g. while the UNet is unavailable)."""
    p.sd_ov_companion_notes = None
    asked = sd_unet.get_unet_option()
    recipe_change = current_openvino_unet() is not None and isinstance(asked, OpenVINOUnetOption)
    with handing_over(recipe_change):  # the torch UNet stays freed, the companions compiled
        sd_unet.apply_unet()
        unet = current_openvino_unet()
        if unet is not None:
            unet.begin_job()  # after an earlier job's failure: opens again
            p.sd_ov_companion_notes = unet.prepare_companions()


def start_batch(p, interval, branch, schedule) -> None:
    unet = current_openvino_unet()
    if unet is not None:
        notes = getattr(p, "sd_ov_companion_notes", None)
        unet.start_job(job_deepcache(interval, branch, schedule), int(p.steps), companion_notes=notes)


def before_sampling(p) -> None:
    """Each sampling pass (hires fix's too): in Forge, the OpenVINO UNet goes into this pass's
    UNet patcher (`forge.ForgeUnet.install`); A1111 routes its calls through the SD Unet already."""
    unet = current_openvino_unet()
    install = getattr(unet, "install", None)
    if install is not None:
        install(p)


def start_hires_pass(p, interval, branch, schedule) -> None:
    unet = current_openvino_unet()
    if unet is not None:
        steps = int(getattr(p, "hr_second_pass_steps", 0) or p.steps)
        unet.start_job(job_deepcache(interval, branch, schedule), steps, first_pass=False)


def not_served_because(p) -> str:
    """Why no OpenVINO UNet is current for this job, in the user's words."""
    why = not_served_here()
    if why:
        return why
    if getattr(p, "sd_ov_saved_unet_setting", None) is not None:
        return "turned off for this job"
    option = sd_unet.current_unet_option
    if option is not None:
        return f"SD Unet is {option.label}"
    setting = getattr(shared.opts, "sd_unet", "Automatic")
    if setting == "Automatic":
        checkpoint = getattr(getattr(shared.sd_model, "sd_checkpoint_info", None), "model_name", "?")
        return f"no OpenVINO UNet is listed for {checkpoint}; refresh the SD Unet list in Settings"
    return f"SD Unet is {setting}"


def write_infotext(p) -> None:
    """The batch's record → the infotext and the progress area; a job OpenVINO does not serve says
    why."""
    for key in INFOTEXT_KEYS:
        p.extra_generation_params.pop(key, None)
    unet = current_openvino_unet()
    if unet is None:
        because = not_served_because(p)
        p.extra_generation_params[INFOTEXT_KEY] = f"off ({because})"
        shared.state.textinfo = f"OpenVINO: off ({because})"
        return
    record = unet.record
    text = record.infotext()
    p.extra_generation_params[INFOTEXT_KEY] = text
    served = unet.served
    if record.openvino_calls and served is not None:
        if served.job_deepcache.enabled:
            origin = f" ({RECIPES})" if getattr(unet, "schedule_is_recipes", False) else ""
            p.extra_generation_params[DEEPCACHE_INFOTEXT_KEY] = served.job_deepcache.infotext() + origin
        elif getattr(unet, "recipe_schedule", DeepCacheConfig()).enabled and not unet.schedule_is_recipes:
            # the job asked for none where the recipe has a schedule: said, so a reader knows
            p.extra_generation_params[DEEPCACHE_INFOTEXT_KEY] = (
                f"off ({RECIPES}: {unet.recipe_schedule.infotext()})"
            )
        if record.lora:
            p.extra_generation_params[LORA_INFOTEXT_KEY] = record.lora
        if record.preset:
            p.extra_generation_params[PRESET_INFOTEXT_KEY] = record.preset
        if record.controlnet:
            p.extra_generation_params[CONTROLNET_INFOTEXT_KEY] = (
                f"{record.controlnet}, {unet.control_models.infotext()}"
            )
        note = token_merging_note(webui_token_merging(p), unet.recipe)
        if note:
            p.extra_generation_params[TOME_INFOTEXT_KEY] = note
    companions = {
        VAE_INFOTEXT_KEY: unet.companions.vae_infotext(),
        TEXT_ENCODER_INFOTEXT_KEY: unet.companions.text_encoder_infotext(),
    }
    for key, said in companions.items():
        if said:
            p.extra_generation_params[key] = said
    if getattr(p, "sd_ov_cfg1_skip", False) and record.openvino_calls:
        record.note(
            "CFG 1: the negative prompt's half of each UNet call skipped (Skip Early CFG 1, the same picture)"
        )
    if record.notes:
        p.extra_generation_params[NOTE_INFOTEXT_KEY] = "; ".join(record.notes)
    shared.state.textinfo = f"OpenVINO: {text}"
    # where the job's seconds went (bench: the rest of a request is the webui's own work)
    seconds = ", ".join(s for s in (record.seconds(), unet.companions.seconds()) if s)
    if seconds:
        print(f"[sd-ov] job seconds: {seconds}")


def sampling_ended(p) -> None:
    unet = current_openvino_unet()
    if unet is not None:
        unet.sampling_ended()


def decoding_ended(p) -> None:
    unet = current_openvino_unet()
    if unet is not None:
        unet.decoding_ended()


def after_process(p) -> None:
    saved = getattr(p, "sd_ov_saved_unet_setting", None)
    if saved is not None and shared.opts.sd_unet != saved:
        shared.opts.sd_unet = saved  # the webui restores only settings it had stored
    unet = current_openvino_unet()
    if unet is not None:
        unet.job_ended()


def pasted_deepcache(params: dict, field: str):
    """The accordion's DeepCache control from a pasted infotext; interval 0 for OpenVINO pictures
    made without it, -1 for those made with their recipe's schedule; None (leave alone) for
    pictures not made by OpenVINO."""
    text = params.get(DEEPCACHE_INFOTEXT_KEY)
    if text is None:
        made_by_openvino = not str(params.get(INFOTEXT_KEY, "off")).startswith("off")
        return 0 if field == "interval" and made_by_openvino else None
    text = str(text)
    if text.startswith("off"):
        return 0 if field == "interval" else None
    if text.endswith(f"({RECIPES})") and field == "interval":
        return RECIPES_SCHEDULE
    try:
        return getattr(DeepCacheConfig.from_infotext(text.split(" (")[0]), field)
    except (ValueError, KeyError):
        return None
