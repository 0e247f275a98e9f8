"""LoRAs in a GenAI folder, baked: GenAI applies adapters by the names of an optimum-exported
UNet (`lora_unet_down_blocks_...` matched to diffusers' layers), which sd-ov's ldm graph does not
carry, so a LoRA is built into the folder at the weight chosen: the UNet's as constant low-rank
branches beside its layers (`graphs.lora_bake`: an INT8 recipe keeps its INT8 weights), the text
encoder's merged into its torch weights before it is traced."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from ..graphs.lora_branch import LoraLayer, UnsupportedLoraError


@dataclass
class BakedLora:
    """The LoRAs built into an export: the UNet's low-rank updates by ldm layer path, the text
    encoder's by transformers' module path (SD1.x's CLIPTextModel), their names with weights."""

    unet: Mapping[str, LoraLayer] = field(default_factory=dict)
    text_encoder: Mapping[str, LoraLayer] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)


def merged(clip: torch.nn.Module, layers: Mapping[str, LoraLayer]) -> torch.nn.Module:
    """A copy of `clip` with each update merged into its Linear's weight (`W + up @ down`); `clip`
    itself when there are none."""
    if not layers:
        return clip
    clip = copy.deepcopy(clip)
    with torch.no_grad():
        for path, update in layers.items():
            try:
                weight = clip.get_submodule(path).weight
            except AttributeError as err:
                raise UnsupportedLoraError(f"the text encoder has no layer {path} for the LoRA") from err
            delta = torch.from_numpy(np.asarray(update.up, np.float32) @ np.asarray(update.down, np.float32))
            if delta.shape != weight.shape:
                raise UnsupportedLoraError(
                    f"LoRA for {path} is {tuple(delta.shape)}; the layer is {tuple(weight.shape)}"
                )
            weight += delta
    return clip
