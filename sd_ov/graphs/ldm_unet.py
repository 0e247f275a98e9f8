"""The webui's SD1/SD2 UNet (`ldm...openaimodel.UNetModel`) and SDXL's (sgm's class of the same
name): build, describe, load (tracing it: `traceable_unet`).

The ldm package is imported lazily: the webui ships its own copy, tests and the demo use the
identical one from PyPI's stable-diffusion-sdkit.
"""

from __future__ import annotations

import json
import math
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    import numpy as np

from ..constants import CHECKPOINT_UNET_PREFIX
from ..errors import UnsupportedModelError
from ..store.unet_spec import UNetSpec

# The UNet's module in the webui: ldm's for SD1/SD2, sgm's (Stability's generative-models) for
# SDXL. Both classes have the same blocks and forward; sgm's adds the vector conditioning `y`.
# One UNet call's inputs as numpy ({"x": ..., "timesteps": ..., "context": ...}): what calibration
# captures and NNCF, pruning and the DeepCache pair are fed.
Sample = dict[str, "np.ndarray"]

UNET_MODULES = ("ldm.modules.diffusionmodules.openaimodel", "sgm.modules.diffusionmodules.openaimodel")
ATTENTION_MODULES = ("ldm.modules.attention", "sgm.modules.attention")


def _openaimodel():
    from ldm.modules.diffusionmodules import openaimodel

    return openaimodel


def is_sgm_config(config: dict[str, Any]) -> bool:
    """An SDXL-style config (a vector conditioning, per-level transformer depths): sgm's class."""
    return "adm_in_channels" in config or isinstance(config.get("transformer_depth"), list)


def openaimodel_for(config: dict[str, Any]):
    """The openaimodel module that builds `config`: ldm's for SD1/SD2, sgm's for SDXL (a clear
    error where Stability's generative-models is not importable)."""
    if not is_sgm_config(config):
        return _openaimodel()
    try:
        from sgm.modules.diffusionmodules import openaimodel
    except ImportError as err:
        raise UnsupportedModelError(
            "SDXL's UNet class (sgm, from Stability's generative-models repository) is not importable "
            f"here ({err}): the webui's repositories/generative-models provides it"
        ) from err
    return openaimodel


def openaimodel_of(unet: torch.nn.Module):
    """The openaimodel module `unet`'s class comes from (ldm's or sgm's), or None."""
    module = sys.modules.get(type(unet).__module__)
    if type(unet).__module__ in UNET_MODULES and isinstance(unet, module.UNetModel):
        return module
    return None


def load_config(name_or_path: str) -> dict[str, Any]:
    """A UNet config: a shipped name (sd15, sd2, tiny) or a JSON file of UNetModel kwargs."""
    path = Path(name_or_path)
    if path.suffix == ".json" and path.exists():
        text = path.read_text()
    else:
        text = resources.files("sd_ov.configs").joinpath(f"{name_or_path}_unet.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def build_unet(config: dict[str, Any], seed: int | None = 0) -> torch.nn.Module:
    """An ldm UNetModel in eval mode; with a seed, every weight is random (zero-init ones too).

    The ldm code zero-initialises the output convolution and each transformer's proj_out, so a
    fresh model outputs zeros: useless for comparing two runtimes. Random weights of sensible
    scale make the comparison meaningful (fidelity to torch on the same weights, not picture
    quality).
    """
    if seed is not None:
        torch.manual_seed(seed)
    model = openaimodel_for(config).UNetModel(**config).eval()
    return model if seed is None else randomize_zero_init(model, seed)


def randomize_zero_init(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give the zero-initialised weights (output convolutions, proj_out) random values of
    sensible scale, so that two runtimes' outputs can be compared at all."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1 and not param.any():
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=gen) / math.sqrt(fan_in))
    return model


def describe(unet: torch.nn.Module) -> UNetSpec:
    """Read the interface off a UNet; refuses what the exporter does not support."""
    if openaimodel_of(unet) is None:
        raise UnsupportedModelError(
            f"{type(unet).__module__}.{type(unet).__name__} is not supported: sd-ov exports the SD1/SD2 "
            "UNet (ldm UNetModel) and SDXL's (sgm UNetModel); other architectures keep running on torch."
        )
    adm_channels = 0
    num_classes = getattr(unet, "num_classes", None)
    if num_classes == "sequential":  # a vector (SDXL's, SD2 unCLIP's): label_emb = Sequential(Linear, ...)
        adm_channels = int(unet.label_emb[0][0].in_features)
    elif num_classes is not None:
        raise UnsupportedModelError(
            f"class-conditional UNets (num_classes={num_classes!r}: labels, not a vector) are not supported"
        )
    context_dim = next(
        (m.to_k.in_features for name, m in unet.named_modules() if name.endswith("attn2")), None
    )
    if context_dim is None:
        raise UnsupportedModelError("the UNet has no cross-attention: not a text-to-image SD UNet")
    return UNetSpec(
        in_channels=int(unet.in_channels),
        out_channels=int(unet.out_channels),
        context_dim=int(context_dim),
        model_channels=int(unet.model_channels),
        parameters=sum(p.numel() for p in unet.parameters()),
        downsample=2 ** (len(unet.channel_mult) - 1),
        adm_channels=adm_channels,
    )


def config_for_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Pick the shipped config matching a checkpoint's UNet (SD1, SD2 or SDXL base; inpainting
    channels), from the shapes of its weights only."""
    k_weight = next((v for k, v in state_dict.items() if k.endswith("attn2.to_k.weight")), None)
    first = state_dict.get("input_blocks.0.0.weight")
    if k_weight is None or first is None:
        raise UnsupportedModelError("no SD1, SD2 or SDXL UNet found in this checkpoint")
    context_dim = k_weight.shape[1]
    vector = state_dict.get("label_emb.0.0.weight")
    if context_dim == 768 and vector is None:
        config = load_config("sd15")
    elif context_dim == 1024 and vector is None:
        config = load_config("sd2")
    elif context_dim == 2048 and vector is not None and vector.shape[1] == 2816:
        config = load_config("sdxl")
    else:
        kind = "SDXL refiner" if context_dim == 1280 else f"cross-attention width {context_dim}"
        extra = f", a vector conditioning of {vector.shape[1]}" if vector is not None else ""
        raise UnsupportedModelError(f"this UNet is not supported: {kind}{extra}")
    config["in_channels"] = int(first.shape[1])
    return config


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a single-file SD checkpoint (.safetensors or .ckpt)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    full = torch.load(str(path), map_location="cpu", weights_only=True)
    return full.get("state_dict", full)


def unet_state_dict_from_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The UNet's weights of a single-file SD checkpoint (.safetensors or .ckpt)."""
    path = Path(path)
    full = read_checkpoint(path)
    unet = {
        k[len(CHECKPOINT_UNET_PREFIX) :]: v for k, v in full.items() if k.startswith(CHECKPOINT_UNET_PREFIX)
    }
    if not unet:
        raise UnsupportedModelError(f"{path.name} holds no '{CHECKPOINT_UNET_PREFIX}*' weights")
    return unet


def load_unet_from_checkpoint(path: str | Path, config: dict[str, Any] | None = None) -> torch.nn.Module:
    """The checkpoint's UNet in FP32, built on the meta device and given the file's weights (one
    tensor converted at a time): the peak is one FP32 copy, which matters for SDXL's 10 GB."""
    state = unet_state_dict_from_checkpoint(path)
    config = config or config_for_state_dict(state)
    with torch.device("meta"):
        unet = openaimodel_for(config).UNetModel(**config)
    weights = {}
    for key in list(state):
        weights[key] = state.pop(key).float()
    unet.load_state_dict(weights, strict=True, assign=True)
    leftover = [name for name, t in [*unet.named_parameters(), *unet.named_buffers()] if t.is_meta]
    if leftover:
        raise UnsupportedModelError(f"the checkpoint's UNet lacks {', '.join(leftover[:3])}")
    return unet.eval()


def feature_shapes(unet: torch.nn.Module, height: int, width: int) -> list[tuple[int, int, int]]:
    """(channels, height, width) of each input block's output, then the middle block's, for a
    latent of height x width: where ControlNet adds its residuals (the skip connections). Read off
    the blocks by their layers' names, so it holds for ldm's, sgm's and Forge's class alike."""
    channels, h, w = int(unet.model_channels), int(height), int(width)
    shapes = []
    for block in unet.input_blocks:
        for layer in block:
            if type(layer).__name__ == "Downsample":  # a stride-2 conv (pad 1) rounds up, pooling down
                h, w = ((h + 1) // 2, (w + 1) // 2) if layer.use_conv else (h // 2, w // 2)
            channels = int(getattr(layer, "out_channels", channels))  # attention keeps its input's
        shapes.append((channels, h, w))
    for layer in unet.middle_block:
        channels = int(getattr(layer, "out_channels", channels))
    shapes.append((channels, h, w))
    return shapes
