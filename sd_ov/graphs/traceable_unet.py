"""An ldm/sgm UNet made traceable for OpenVINO's `convert_model`, and put back afterwards: SDPA
attention (one fusable op, free batch, tokens and context length), no gradient checkpointing,
skip joins that resize as the webui's do at any latent size, the class's own forward."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import UnsupportedModelError
from .ldm_unet import ATTENTION_MODULES, _openaimodel, openaimodel_of


def _sdpa_cross_attention(
    self, x, context=None, mask=None, additional_tokens=None, n_times_crossframe_attn_in_self=0
):
    """ldm CrossAttention as one scaled_dot_product_attention: OpenVINO fuses it into one op.

    The webui swaps CrossAttention.forward for split/sub-quadratic variants whose chunking is
    fixed at trace time; this one keeps batch, tokens and context length free.
    """
    if mask is not None or additional_tokens is not None or n_times_crossframe_attn_in_self:
        raise UnsupportedModelError("attention masks and extra tokens are not supported by the exporter")
    context = x if context is None else context
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return self.to_out(out.transpose(1, 2).flatten(2))


class _SkipJoinResize:
    """openaimodel's `th` while tracing: the host's torch, with a `cat` that resizes an
    upsampled feature to its skip connection's size before joining them.

    The webui's `TorchHijackForUnet.cat` resizes (nearest) when the two sizes differ, which is
    what lets it make pictures whose sides are multiples of 8 px, not 64: an odd latent side
    halves up (41 → 21) and doubles back to 42. A trace at an even size would never take that
    branch, so the resize is put into the graph at every join that follows an Upsample; where
    the sizes agree it is the identity (nearest, same size), so every size gives the webui's
    numbers and the IR's spatial dimensions stay free.
    """

    def __init__(self, host: Any) -> None:
        self._host = host
        self.upsampled = False

    def __getattr__(self, item: str) -> Any:
        return getattr(self._host, item)

    def cat(self, tensors, *args, **kwargs):
        if self.upsampled and len(tensors) == 2 and tensors[0].dim() == 4:
            self.upsampled = False
            a, b = tensors
            tensors = (F.interpolate(a, size=b.shape[-2:], mode="nearest"), b)
        return torch.cat(tensors, *args, **kwargs)


def join_follows_upsample(unet: torch.nn.Module) -> None:
    """Tell the tracing cat that the next skip join's first tensor was upsampled, when the
    upsample itself is not in the graph (DeepCache's shallow model starts from a cached
    feature that its full model took after an upsample). Outside tracing: nothing to do, the
    host's cat resizes by comparing sizes."""
    join = getattr(openaimodel_of(unet), "th", None)
    if isinstance(join, _SkipJoinResize):
        join.upsampled = True


def ends_with_upsample(unet: torch.nn.Module, block: torch.nn.Module) -> bool:
    """Whether an output block's last layer is an Upsample (its output is the next join's h)."""
    module = openaimodel_of(unet) or _openaimodel()
    return isinstance(block, torch.nn.Sequential) and isinstance(block[-1], module.Upsample)


@contextlib.contextmanager
def _resized_skip_joins(unet: torch.nn.Module) -> Iterator[None]:
    module = openaimodel_of(unet) or _openaimodel()
    join = _SkipJoinResize(module.th)

    def mark(*_: Any) -> None:
        join.upsampled = True

    hooks = [m.register_forward_hook(mark) for m in unet.modules() if isinstance(m, module.Upsample)]
    saved, module.th = module.th, join
    try:
        yield
    finally:
        module.th = saved
        for hook in hooks:
            hook.remove()


@contextlib.contextmanager
def zero_padding(module: torch.nn.Module) -> Iterator[None]:
    """The module's convolutions with zero padding for the duration (an export traces the
    checkpoint's function, not a job's Tiling: the webui sets every `Conv2d` circular for one)."""
    changed = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d) and m.padding_mode != "zeros"]
    saved = [m.padding_mode for m in changed]
    for conv in changed:
        conv.padding_mode = "zeros"
    try:
        yield
    finally:
        for conv, mode in zip(changed, saved, strict=True):
            conv.padding_mode = mode


@contextlib.contextmanager
def traceable(unet: torch.nn.Module) -> Iterator[None]:
    """Make an ldm UNet traceable for the duration: SDPA attention, no gradient checkpointing,
    skip joins that take any latent size (`_SkipJoinResize`), the class's own forward (an
    extension's forward set on the instance, as sd-webui-controlnet's, is set aside), and its
    convolutions' own zero padding (the webui's Tiling sets them circular for a job: traced so,
    the cached graph of the checkpoint would wrap every later picture around).

    Everything is put back as it was, whatever the webui had installed before.
    """
    import ldm.modules.attention  # noqa: F401 - the SD1/SD2 attention, always there

    classes = [
        c
        for attention in (sys.modules.get(name) for name in ATTENTION_MODULES)
        if attention is not None
        for c in (
            getattr(attention, "CrossAttention", None),
            getattr(attention, "MemoryEfficientCrossAttention", None),
        )
        if c
    ]
    saved_forwards = {c: c.__dict__.get("forward") for c in classes}
    saved_flags: list[tuple[torch.nn.Module, str, Any]] = []
    instance_forward = unet.__dict__.pop("forward", None)
    for module in unet.modules():
        for flag in ("use_checkpoint", "checkpoint"):
            if isinstance(getattr(module, flag, None), bool):
                saved_flags.append((module, flag, getattr(module, flag)))
                setattr(module, flag, False)
    try:
        for c in classes:
            c.forward = _sdpa_cross_attention
        with _resized_skip_joins(unet), zero_padding(unet):
            yield
    finally:
        for c, fwd in saved_forwards.items():
            if fwd is None:
                del c.forward
            else:
                c.forward = fwd
        for module, flag, value in saved_flags:
            setattr(module, flag, value)
        if instance_forward is not None:
            unet.forward = instance_forward
