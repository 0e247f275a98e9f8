"""What the webui's Lora extension has loaded for this job (`extensions-builtin/Lora/networks.py`,
imported by the webui as the top-level module `networks`), and which of our modules it changes.

The extension applies a network inside torch's forward of each layer it maps to (`sd_module`);
a compiled OpenVINO model never runs those forwards. So the UNet's low-rank networks are handed
to the OpenVINO UNet's LoRA branch (`sd_ov.graphs.lora_branch`), and any network it can't take makes the
job torch's, with a note: never dropped silently.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from sd_ov import LoraLayer, concatenate


def loaded_networks() -> list:
    networks = sys.modules.get("networks")
    return list(getattr(networks, "loaded_networks", []) or []) if networks is not None else []


@contextlib.contextmanager
def networks_set_aside() -> Iterator[None]:
    """While inside (an export's trace), the Lora extension has no network loaded: its patched
    forwards then restore the base weights instead of merging the prompt's LoRAs, so a LoRA in
    the job that first exports a checkpoint is never baked into the cached IR."""
    networks = sys.modules.get("networks")
    loaded = getattr(networks, "loaded_networks", None) if networks is not None else None
    if not loaded:
        yield
        return
    saved = list(loaded)
    loaded.clear()
    try:
        yield
    finally:
        loaded[:] = saved


def networks_changing(module: torch.nn.Module, multiplier: str) -> list[str]:
    """Names (with their weight) of loaded networks with a layer inside `module` and a non-zero
    `multiplier` (`te_multiplier` or `unet_multiplier`)."""
    inside: set[int] | None = None
    names = []
    for net in loaded_networks():
        weight = float(getattr(net, multiplier, 1.0) or 0)
        if weight == 0:
            continue
        if inside is None:
            inside = {id(m) for m in module.modules()}
        if any(id(getattr(m, "sd_module", None)) in inside for m in getattr(net, "modules", {}).values()):
            names.append(f"{getattr(net, 'name', '?')}:{weight:g}")
    return names


# The Lora extension's module classes (network_*.py) and what users call them.
NETWORK_KINDS = {
    "NetworkModuleHada": "LoHa",
    "NetworkModuleLokr": "LoKr",
    "NetworkModuleIa3": "IA3",
    "NetworkModuleOFT": "OFT",
    "NetworkModuleGLora": "GLoRA",
    "NetworkModuleFull": "full-weight diff",
    "NetworkModuleNorm": "norm",
}


def _why_not_low_rank(module) -> str | None:
    """Why a network module is not a plain low-rank update of a Linear or 1x1 conv; None if it is."""
    kind = type(module).__name__
    if kind != "NetworkModuleLora":
        return f"{NETWORK_KINDS.get(kind, kind)} layers are not served on OpenVINO yet"
    if getattr(module, "dora_scale", None) is not None:
        return "DoRA layers are not served on OpenVINO yet"
    if getattr(module, "bias", None) is not None:
        return "a LoRA with a bias diff is not served on OpenVINO yet"
    return None


def low_rank_layer(
    up: torch.Tensor, down: torch.Tensor, mid: torch.Tensor | None, scale: float, rank: int | None = None
) -> LoraLayer:
    """The branch's update of one layer, `scale * up @ down`, as both hosts' LoRA loaders rebuild
    it: a LoCon 3x3 layer's down keeps torch's (in, kh, kw) order; a CP-decomposed one (1x1 down,
    kxk mid) is the same as a kxk down of the mid's rank (einsum('n m k l, i n, m j -> i j k l'));
    `rank` cuts a plain one (the webui's dyn_dim)."""
    up = up.detach().float().reshape(up.shape[0], -1)
    down = down.detach().float().reshape(down.shape[0], -1)
    if mid is not None:
        down = torch.einsum("nmkl,mj->njkl", mid.detach().float(), down).reshape(mid.shape[0], -1)
    elif rank is not None:
        up, down = up[:, :rank], down[:rank]
    return LoraLayer(down.cpu().numpy(), (up * scale).cpu().numpy())


def _low_rank(module) -> LoraLayer:
    """The webui's own numbers (`rebuild_conventional`, `rebuild_cp_decomposition`,
    `finalize_updown`): rank cut to the network's dyn_dim, `calc_scale()` (alpha / rank, or scale)
    and `multiplier()` folded into up."""
    mid = getattr(module, "mid_model", None)
    return low_rank_layer(
        module.up_model.weight,
        module.down_model.weight,
        mid.weight if mid is not None else None,
        float(module.multiplier()) * float(module.calc_scale()),
        getattr(module.network, "dyn_dim", None),
    )


@dataclass
class UNetLora:
    """The job's UNet LoRAs: their low-rank updates by layer path, their names for the infotext,
    or why they can't run on OpenVINO (the job is then torch's)."""

    layers: dict[str, LoraLayer] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    why_not: str | None = None


def unet_lora(unet: torch.nn.Module, multiplier: str = "unet_multiplier") -> UNetLora:
    """The loaded networks' low-rank updates of `unet`'s layers (by path in it); `multiplier`:
    which weight applies ("te_multiplier" for a text encoder)."""
    paths: dict[int, str] | None = None
    parts, names = [], []
    for net in loaded_networks():
        weight = float(getattr(net, multiplier, 1.0) or 0)
        if weight == 0:
            continue
        if paths is None:
            paths = {id(m): name for name, m in unet.named_modules()}
        label = f"{getattr(net, 'name', '?')}:{weight:g}"
        layers: dict[str, LoraLayer] = {}
        for key, module in getattr(net, "modules", {}).items():
            path = paths.get(id(getattr(module, "sd_module", None)))
            if path is None:
                continue  # the text encoder's (served by torch, see text_encoder.py)
            why = _why_not_low_rank(module)
            if why:
                return UNetLora(why_not=f"LoRA {label}: {why} ({key})")
            layers[path] = _low_rank(module)
        if layers:
            parts.append(layers)
            names.append(label)
    return UNetLora(concatenate(parts), names)
