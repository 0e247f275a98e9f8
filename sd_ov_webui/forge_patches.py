"""What Forge's UnetPatcher of a sampling pass carries for the UNet, read for the OpenVINO UNet:
the LoRA patches of Forge's Lora extension (as the LoRA branch's low-rank updates), the units of
its ControlNet and their per-call residuals (as the UNet's residual inputs), and the patches
other extensions put inside the UNet, which the compiled UNet can't follow."""

from __future__ import annotations

from pathlib import Path

import torch

from sd_ov import LoraLayer, concatenate, feature_shapes

from .lora import UNetLora, low_rank_layer

UNET_KEY = "diffusion_model."  # Forge's LoRA keys: the KModel's names of the UNet's weights
# Forge's LoRA patch kinds (backend/patcher/lora.py) and what users call them.
FORGE_KINDS = {
    "diff": "full-weight diff",
    "set": "weight replacement",
    "lokr": "LoKr",
    "loha": "LoHa",
    "glora": "GLoRA",
}
# transformer_options entries that change what happens inside the UNet (FreeU, SAG, PAG, Kohya's
# HRFix, ... put theirs here): the compiled UNet can't follow them.
INSIDE_THE_UNET = (
    "patches",
    "patches_replace",
    "block_modifiers",
    "block_inner_modifiers",
    "group_norm_wrapper",
)


def inside_patches(patcher) -> list[str]:
    """What other extensions patched inside this UNet patcher (names, for the reason)."""
    options = patcher.model_options.get("transformer_options", {})
    found = [key for key in INSIDE_THE_UNET if options.get(key)]
    found += [name for name in patcher.object_patches if name.startswith("diffusion_model")]
    return found


def forge_lora(patcher, prefix: str = UNET_KEY) -> UNetLora:
    """Forge's LoRA patches (`UnetPatcher.lora_patches`: per LoRA file, `diffusion_model.<layer>.weight`
    → `[strength, ("lora", (up, down, alpha, mid, dora_scale)), strength_model, offset, function]`,
    which `backend/patcher/lora.py` merges as `weight += strength * alpha / rank * up @ down`) as
    the OpenVINO branch's low-rank updates; a patch of another kind makes the job torch's, with why.
    `prefix`: whose layers (the UNet's; "clip_l.transformer." for the CLIP patcher's CLIP-L)."""
    parts, names = [], []
    for (filename, strength, *_), patches in getattr(patcher, "lora_patches", {}).items():
        label = f"{Path(str(filename)).stem}:{float(strength):g}"
        layers: list[dict[str, LoraLayer]] = []
        for key, entries in patches.items():
            if not (key.startswith(prefix) and key.endswith(".weight")):
                continue
            path = key[len(prefix) : -len(".weight")]
            for strength_patch, value, strength_model, offset, function in entries:
                why = forge_patch_refusal(value, strength_model, offset, function)
                if why:
                    return UNetLora(why_not=f"LoRA {label}: {why} ({path})")
                layers.append({path: low_rank(value[1], float(strength_patch))})
        if layers:
            parts.append(concatenate(layers))
            names.append(label)
    return UNetLora(concatenate(parts), names) if parts else UNetLora()


def forge_patch_refusal(value, strength_model, offset, function) -> str | None:
    """Why a Forge LoRA patch is not a plain low-rank update of the layer; None if it is."""
    kind = value[0] if isinstance(value, tuple) and len(value) == 2 else "diff"
    if kind != "lora":
        return f"{FORGE_KINDS.get(kind, kind)} layers are not served on OpenVINO yet"
    if value[1][4] is not None:
        return "DoRA layers are not served on OpenVINO yet"
    if offset is not None or function is not None or float(strength_model) != 1.0:
        return "a patch on part of a layer, or one that scales its weight, is not served on OpenVINO yet"
    return None


def low_rank(lora: tuple, strength: float) -> LoraLayer:
    """Forge's (up, down, alpha, mid, _) at `strength`: scaled by strength x alpha / rank, as
    `backend/patcher/lora.py` merges it."""
    up, down, alpha, mid, _ = lora
    rank = down.shape[0]
    return low_rank_layer(up, down, mid, strength * (float(alpha) / rank if alpha is not None else 1.0))


def forge_units(patcher) -> tuple[list, str | None]:
    """The ControlNet units Forge's ControlNet put on this pass's UnetPatcher (`add_patched_controlnet`:
    a linked list), and why torch must run them, if it must. Plain ControlNets only add residuals
    at the skip joins; a ControlLoRA builds its control model from the UNet's own weights, a
    T2I-Adapter adds after the input blocks: not served on OpenVINO yet."""
    units = patcher.list_controlnets() if getattr(patcher, "controlnet_linked_list", None) is not None else []
    other = sorted({type(unit).__name__ for unit in units} - {"ControlNet"})
    why = f"ControlNet in Forge: {', '.join(other)} units are not served on OpenVINO yet" if other else None
    return units, why


def forge_residuals(control: dict | None, x: torch.Tensor, unet: torch.nn.Module) -> list[torch.Tensor] | str:
    """Forge's per-call control (`control_merge`: {"input", "middle", "output"}) as the OpenVINO
    UNet's residual inputs (one per input block, then the middle block's), or why not. Forge's UNet
    pops `output` as it pops its skips, so `output[i]` joins skip i (a shorter list, the last
    skips); `middle` follows the middle block. A unit outside its steps sends none: zeros, which is
    what adding nothing is."""
    shapes = feature_shapes(unet, x.shape[2], x.shape[3])
    control = control or {}
    if control.get("input"):
        return "T2I-Adapter residuals (after the input blocks) are not served on OpenVINO yet"
    output, middle = list(control.get("output") or []), list(control.get("middle") or [])
    if len(output) > len(shapes) - 1 or len(middle) > 1:
        return "a ControlNet whose skip joins are not this UNet's"
    joined = [None] * (len(shapes) - 1 - len(output)) + output + (middle or [None])
    return [
        r if r is not None else x.new_zeros(x.shape[0], *shape)
        for r, shape in zip(joined, shapes, strict=True)
    ]
