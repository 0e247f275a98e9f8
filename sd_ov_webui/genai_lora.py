"""The LoRAs a GenAI export bakes in, named as in a prompt (`<lora:name:te_weight:unet_weight>`)
and loaded by the host's own Lora extension (`networks.load_networks`, A1111's and Forge's), so
its weights, scale and rank cut are the ones a job uses; read back as the OpenVINO LoRA branch's
low-rank updates (`lora.unet_lora`, `forge_patches.forge_lora`)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from sd_ov import BakedLora, SdOvError

from .forge_patches import forge_lora
from .host import is_forge
from .lora import loaded_networks, networks_changing, unet_lora

LORA_TAG = re.compile(r"<lora:([^:>]+)((?::[^:>]*)*)>")
FORGE_CLIP_L = "clip_l.transformer."  # Forge's CLIP patcher keys of CLIP-L's weights


def parse_loras(spec: str) -> list[tuple[str, float, float]]:
    """`<lora:name>`, `<lora:name:w>` (both weights), `<lora:name:te:unet>` → (name, te, unet), as
    the webui's Lora extension reads its positional weights."""
    found = []
    for name, rest in LORA_TAG.findall(spec or ""):
        numbers = [p for p in rest.split(":")[1:] if p.strip()]
        try:
            weights = [float(p) for p in numbers]
        except ValueError as err:
            raise SdOvError(f"<lora:{name}{rest}>: the weights must be numbers") from err
        te = weights[0] if weights else 1.0
        found.append((name.strip(), te, weights[1] if len(weights) > 1 else te))
    if spec and spec.strip() and not found:
        raise SdOvError(f"no <lora:name:weight> in {spec!r}")
    return found


def baked_loras(sd_model, spec: str | None) -> BakedLora:
    """The LoRAs of `spec` loaded by the host's Lora extension, as low-rank updates of the UNet's
    and (SD1.x) the text encoder's layers; an empty spec: none. A LoRA kind the branch can't take
    (LoHa, DoRA, ...), or a missing file, is a clear error."""
    wanted = parse_loras(spec or "")
    if not wanted:
        return BakedLora()
    networks = sys.modules.get("networks")
    if networks is None or not hasattr(networks, "load_networks"):
        raise SdOvError("the webui's Lora extension is not loaded: LoRAs can't be baked")
    names = [name for name, _, _ in wanted]
    networks.load_networks(names, [te for _, te, _ in wanted], [u for _, _, u in wanted], [None] * len(names))
    missing = sorted(set(names) - {getattr(n, "name", None) for n in loaded_networks()})
    if missing:
        raise SdOvError(f"LoRA not found: {', '.join(missing)} (the names in models/Lora)")
    labels = [f"{name}:{unet:g}" for name, _, unet in wanted]
    if is_forge():
        # what load_networks applied them to (it returns early when the last job loaded the same
        # set, and a job's end leaves forge_objects as Forge's processing left them)
        objects = getattr(sd_model, "forge_objects_after_applying_lora", None) or sd_model.forge_objects
        unet = forge_lora(objects.unet)
        clip = getattr(getattr(objects, "clip", None), "patcher", None)
        text = forge_lora(clip, FORGE_CLIP_L) if clip is not None else None
    else:
        unet = unet_lora(sd_model.model.diffusion_model)
        text = _a1111_text_lora(sd_model)
    for part in (unet, text):
        if part is not None and part.why_not:
            raise SdOvError(f"{part.why_not}: not baked into a GenAI folder")
    found = {label.rsplit(":", 1)[0] for part in (unet, text) if part is not None for label in part.names}
    files = {n.name: Path(str(getattr(n.network_on_disk, "filename", ""))).stem for n in loaded_networks()}
    unmatched = [name for name in names if name not in found and files.get(name) not in found]
    if unmatched:  # never a folder that says it has a LoRA it does not carry
        raise SdOvError(
            f"LoRA {', '.join(unmatched)} changes no layer sd-ov can bake into this model (another "
            "architecture's LoRA?): nothing was written"
        )
    return BakedLora(unet.layers, text.layers if text is not None else {}, labels)


def _a1111_text_lora(sd_model):
    """A1111's CLIP-L text model's updates (SD1.x; SDXL's first encoder); a LoRA that changes a
    text tower with no transformers CLIPTextModel here (SDXL's bigG, SD2's) is refused."""
    embedders = getattr(getattr(sd_model, "conditioner", None), "embedders", None)
    first = embedders[0] if embedders else sd_model.cond_stage_model
    transformer = getattr(getattr(first, "wrapped", None), "transformer", None)
    for other in (embedders or [])[1:]:
        if networks_changing(other, "te_multiplier"):
            raise SdOvError(
                "a LoRA that changes SDXL's OpenCLIP text encoder is not baked into a GenAI folder"
            )
    if transformer is None:
        if networks_changing(first, "te_multiplier"):
            raise SdOvError(
                "a LoRA that changes this model's OpenCLIP text encoder is not baked into a GenAI folder"
            )
        return None
    return unet_lora(transformer, "te_multiplier")
