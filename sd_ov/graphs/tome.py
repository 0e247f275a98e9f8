"""Token Merging (ToMe for SD) written so that it traces into an OpenVINO graph.

tomesd merges similar tokens before the self-attention of the highest-resolution transformer
blocks and copies the results back afterwards, so attention there works on fewer tokens. The
webui's own tomesd patch cannot reach a compiled UNet, so the merge is put into the graph at
export time. Differences from tomesd's `bipartite_soft_matching_random2d`, all for tracing:

- the destination token of each 2×2 window is fixed (top-left), as tomesd's `use_rand=False`;
  the split into destinations and sources is then a reshape, valid for any even height and
  width, so the exported IR keeps its dynamic spatial shape;
- the number of merged tokens is computed from the token count inside the graph;
- sources are merged into their destination by scatter-add and a count (a mean), which
  OpenVINO converts to ScatterElementsUpdate.

Only self-attention is merged (tomesd's defaults: `merge_attn=True`, cross-attention and MLP
not merged, `max_downsample=1`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from ..constants import MAX_TOME_RATIO as MAX_RATIO

Merge = Callable[[torch.Tensor], torch.Tensor]


def _windows(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, h·w, C) → (B, h/2·w/2, 4, C): the 2×2 window of each destination, top-left first."""
    b, _, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // 2) * (w // 2), 4, c)


def _unwindows(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, _, c = x.shape
    x = x.reshape(b, h // 2, w // 2, 2, 2, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * w, c)


def bipartite_soft_matching(metric: torch.Tensor, h: int, w: int, ratio: float) -> tuple[Merge, Merge]:
    """merge and unmerge functions for tokens (B, h·w, C) of an h×w grid (h and w even).

    Each source token (three per 2×2 window) is matched to its most similar destination (one per
    window, by cosine similarity of `metric`); the `ratio`·h·w best-matched sources are averaged
    into their destination. unmerge(merge(x)) has the input's shape; merged sources get their
    destination's value back.
    """
    with torch.no_grad():
        windows = _windows(metric / metric.norm(dim=-1, keepdim=True), h, w)
        dst = windows[:, :, 0]
        src = windows[:, :, 1:].flatten(1, 2)
        b, n_src = src.shape[0], src.shape[1]
        best, best_dst = (src @ dst.transpose(-1, -2)).max(dim=-1)  # (B, n_src)
        order = best.argsort(dim=-1, descending=True)  # most similar sources first
        # r = floor(ratio·h·w) merged sources, computed in the graph from the token count
        tokens = torch.ones_like(metric[0, :, 0]).sum()
        r = torch.clamp(torch.floor(tokens * ratio), max=n_src).long()
        positions = torch.arange(n_src, device=metric.device)
        merged_idx = order.index_select(1, positions[:r])  # (B, r)
        kept_idx = order.index_select(1, positions[r:])  # (B, n_src - r)
        merged_dst = best_dst.gather(1, merged_idx)  # (B, r)

    def merge(x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-1]
        win = _windows(x, h, w)
        dst_x, src_x = win[:, :, 0], win[:, :, 1:].flatten(1, 2)
        kept = src_x.gather(1, kept_idx.unsqueeze(-1).expand(-1, -1, c))
        moving = src_x.gather(1, merged_idx.unsqueeze(-1).expand(-1, -1, c))
        index = merged_dst.unsqueeze(-1)
        summed = dst_x.scatter_add(1, index.expand(-1, -1, c), moving)
        counts = torch.ones_like(dst_x[:, :, :1]).scatter_add(1, index, torch.ones_like(moving[:, :, :1]))
        return torch.cat([kept, summed / counts], dim=1)

    def unmerge(x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-1]
        n_kept = kept_idx.shape[1]
        kept, dst_x = x[:, :n_kept], x[:, n_kept:]
        moved = dst_x.gather(1, merged_dst.unsqueeze(-1).expand(-1, -1, c))
        src_x = torch.zeros_like(dst_x[:, :1, :1]).expand(b, n_src, c)
        src_x = src_x.scatter(1, kept_idx.unsqueeze(-1).expand(-1, -1, c), kept)
        src_x = src_x.scatter(1, merged_idx.unsqueeze(-1).expand(-1, -1, c), moved)
        win = torch.cat([dst_x.unsqueeze(2), src_x.unflatten(1, (-1, 3))], dim=2)
        return _unwindows(win, h, w)

    return merge, unmerge


def _merged_forward(block: torch.nn.Module, ratio: float, grid: list[tuple[int, int]]):
    """BasicTransformerBlock._forward with self-attention on merged tokens at the top level."""

    def forward(x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h, w = grid[0]
        if x.shape[1] == h * w:  # highest resolution: tomesd's max_downsample=1
            merge, unmerge = bipartite_soft_matching(x, h, w, ratio)
        else:
            merge = unmerge = _identity
        self_context = context if getattr(block, "disable_self_attn", False) else None
        x = unmerge(block.attn1(merge(block.norm1(x)), context=self_context)) + x
        x = block.attn2(block.norm2(x), context=context) + x
        return block.ff(block.norm3(x)) + x

    return forward


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def check_ratio(ratio: float) -> float:
    ratio = float(ratio)
    if not 0.0 <= ratio <= MAX_RATIO:
        raise ValueError(f"the token merging ratio must be between 0 and {MAX_RATIO}, not {ratio}")
    return ratio


@contextlib.contextmanager
def token_merging(unet: torch.nn.Module, ratio: float) -> Iterator[None]:
    """Merge tokens in `unet`'s top-level self-attention for the duration (export or torch).

    Ratio 0 still runs the merge path (with nothing merged), which is how tests check that the
    reordering and unmerging are exact.
    """
    from ldm.modules.attention import BasicTransformerBlock

    ratio = check_ratio(ratio)
    grid: list[tuple[int, int]] = [(0, 0)]

    def remember_grid(_module: torch.nn.Module, args: tuple) -> None:
        grid[0] = (args[0].shape[2], args[0].shape[3])

    # On the first input block, not the UNet: DeepCache's full and shallow wrappers call the
    # blocks without the UNet's own forward.
    hook = unet.input_blocks[0].register_forward_pre_hook(remember_grid)
    blocks = [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)]
    saved = [(m, m.__dict__.get("_forward")) for m in blocks]
    for m in blocks:
        m._forward = _merged_forward(m, ratio, grid)
    try:
        yield
    finally:
        hook.remove()
        for m, fwd in saved:
            if fwd is None:
                del m._forward
            else:
                m._forward = fwd
