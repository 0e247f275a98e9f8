"""The webui's per-job options that change the torch modules themselves, not their inputs.

A compiled OpenVINO model is a fixed graph: what the webui patches into torch's modules for a job
never reaches it. Each such option is either refused (the job, or the part, goes to torch with
the reason) or served with a note saying what was not applied; docs/faults.md lists them with
their tests.

- Tiling (`p.tiling`, `sd_hijack.model_hijack.apply_circular`): every `Conv2d` of the model pads
  circularly, so the picture wraps around. The graphs pad with zeros: the UNet's job and the VAE
  go to torch (a seamless picture, not a picture 23 dB from it).
- Hypernetworks (`<hypernet:name:weight>`, `shared.loaded_hypernetworks`): the webui's attention
  forward adds them to the cross-attention's keys and values. The graphs have none: torch.
- Hypertile (Settings → Hypertile, `hypertile_enable_unet[_secondpass]`): forward hooks split the
  UNet's self-attention into tiles, an approximation for speed. The graph attends over the whole
  picture (the exact result, no slower on OpenVINO): served, with a note.
- The webui's token merging setting: noted by `job.token_merging_note` (the recipe's own ratio
  is what runs).
"""

from __future__ import annotations

import torch
from modules import shared


def circular_padding(module: torch.nn.Module | None) -> bool:
    """True when the webui's Tiling set this module's convolutions to circular padding."""
    if module is None:
        return False
    return any(
        isinstance(layer, torch.nn.Conv2d) and layer.padding_mode == "circular" for layer in module.modules()
    )


TILING_REASON = (
    "Tiling is on: the OpenVINO graphs pad without wrapping around, so torch makes the seamless picture"
)


def unet_refusal(unet: torch.nn.Module | None) -> str | None:
    """Why torch must make this job's UNet calls, for an option the compiled UNet can't follow."""
    if circular_padding(unet):
        return TILING_REASON
    hypernetworks = list(getattr(shared, "loaded_hypernetworks", None) or [])
    if hypernetworks:
        names = ", ".join(str(getattr(h, "name", "?")) for h in hypernetworks)
        return f"hypernetwork {names}: the OpenVINO UNet does not apply hypernetworks"
    return None


def vae_refusal(vae: torch.nn.Module | None) -> str | None:
    """Why torch's VAE must decode (and encode) this job."""
    return TILING_REASON if circular_padding(vae) else None


def unet_notes(hires_pass: bool = False) -> list[str]:
    """What the job asked of the torch UNet that the OpenVINO UNet serves without."""
    opts = shared.opts
    hypertile = bool(getattr(opts, "hypertile_enable_unet", False))
    if hires_pass:
        hypertile = hypertile or bool(getattr(opts, "hypertile_enable_unet_secondpass", False))
    if hypertile:
        return ["Hypertile not applied: the OpenVINO UNet attends over the whole picture (the exact result)"]
    return []
