"""What the webui's Lora extension has loaded for this job (`extensions-builtin/Lora/networks.py`,
imported by the webui as the top-level module `networks`), and which of our modules it changes.

The extension applies a network inside torch's forward of each layer it maps to (`sd_module`);
a compiled OpenVINO model never runs those forwards, so a network that changes a module we serve
must not be dropped silently: that module runs on torch for the job, with a note.
"""

from __future__ import annotations

import sys

import torch


def loaded_networks() -> list:
    networks = sys.modules.get("networks")
    return list(getattr(networks, "loaded_networks", []) or []) if networks is not None else []


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
