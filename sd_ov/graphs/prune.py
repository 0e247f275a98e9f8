"""Pruning of an ldm UNet before export: FFN neurons (structured) and weight magnitude.

- FFN neurons. Each transformer block's feed-forward is GEGLU (`proj`: dim → 2·inner, then
  value · gelu(gate)) and `net[2]`: inner → dim. Neurons whose GEGLU output is small on the
  calibration inputs contribute little; removing them shrinks both Linear layers, so the dense
  work really shrinks on any device. The statistic is the mean |GEGLU output| per neuron.
- Magnitude. NNCF's `nncf.prune` (unstructured, per layer) zeroes the smallest weights of a
  copy of the UNet; the zeros are folded into the exported weights. Dense CPU kernels do the
  same work on zeros, so this buys disk/compression headroom at best, not speed: the bench
  says so.

Both leave the webui's own UNet as it was: FFN pruning swaps the Linear layers only while
exporting, magnitude pruning works on a copy.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence

import torch

from .ldm_unet import Sample
from .traceable_unet import traceable

KEEP_MULTIPLE = 16  # kept neurons rounded up to this: SIMD-friendly widths


def feed_forwards(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The GEGLU feed-forwards (`FeedForward` modules) of the UNet, by module name."""
    from ldm.modules.attention import GEGLU, FeedForward

    return {
        name: m
        for name, m in unet.named_modules()
        if isinstance(m, FeedForward) and isinstance(m.net[0], GEGLU)
    }


def ffn_activity(unet: torch.nn.Module, samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
    """Mean |GEGLU output| of every FFN neuron over the calibration samples' tokens."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def hook_for(name: str):
        def record(_module, _inputs, output: torch.Tensor) -> None:
            flat = output.detach().abs().reshape(-1, output.shape[-1]).double()
            sums[name] = sums.get(name, 0) + flat.sum(0)
            counts[name] = counts.get(name, 0) + flat.shape[0]

        return record

    for name, ff in feed_forwards(unet).items():
        hooks.append(ff.net[0].register_forward_hook(hook_for(name)))
    try:
        with torch.no_grad(), traceable(unet):
            for sample in samples:
                unet(*(torch.from_numpy(sample[k]) for k in ("x", "timesteps", "context")))
    finally:
        for h in hooks:
            h.remove()
    return {name: (sums[name] / counts[name]).float() for name in sums}


def neurons_to_keep(activity: dict[str, torch.Tensor], ratio: float) -> dict[str, torch.Tensor]:
    """Per FFN, the sorted indices of the most active (1 - ratio) neurons."""
    keep = {}
    for name, score in activity.items():
        inner = score.numel()
        rounded_up = -(-round(inner * (1 - ratio)) // KEEP_MULTIPLE) * KEEP_MULTIPLE
        count = min(inner, max(KEEP_MULTIPLE, rounded_up))
        keep[name] = score.topk(count).indices.sort().values
    return keep


def _shrunk(ff: torch.nn.Module, keep: torch.Tensor) -> tuple[torch.nn.Linear, torch.nn.Linear]:
    proj, out = ff.net[0].proj, ff.net[2]
    inner = out.in_features
    rows = torch.cat([keep, keep + inner])  # value half and gate half of GEGLU's projection
    new_proj = torch.nn.Linear(proj.in_features, 2 * len(keep), bias=proj.bias is not None)
    new_out = torch.nn.Linear(len(keep), out.out_features, bias=out.bias is not None)
    with torch.no_grad():
        new_proj.weight.copy_(proj.weight[rows])
        if proj.bias is not None:
            new_proj.bias.copy_(proj.bias[rows])
        new_out.weight.copy_(out.weight[:, keep])
        if out.bias is not None:
            new_out.bias.copy_(out.bias)
    return new_proj, new_out


@contextlib.contextmanager
def pruned_ffn(unet: torch.nn.Module, keep: dict[str, torch.Tensor]) -> Iterator[None]:
    """The UNet with its FFN Linear layers cut down to `keep` for the duration (e.g. an export)."""
    ffs = feed_forwards(unet)
    saved = {}
    try:
        for name, indices in keep.items():
            ff = ffs[name]
            saved[name] = (ff.net[0].proj, ff.net[2])
            ff.net[0].proj, ff.net[2] = _shrunk(ff, indices)
        yield
    finally:
        for name, (proj, out) in saved.items():
            ffs[name].net[0].proj, ffs[name].net[2] = proj, out


def magnitude_pruned_copy(
    unet: torch.nn.Module, ratio: float, example: tuple[torch.Tensor, ...]
) -> torch.nn.Module:
    """A copy of the UNet with the smallest `ratio` of each layer's weights zeroed by NNCF."""
    import nncf

    pruned = copy.deepcopy(unet)
    with traceable(pruned):
        return nncf.prune(
            pruned, nncf.PruneMode.UNSTRUCTURED_MAGNITUDE_LOCAL, ratio=ratio, examples_inputs=example
        )
