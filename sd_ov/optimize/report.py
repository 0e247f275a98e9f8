"""Optimize reports as text and HTML: what the tab shows and what `python -m sd_ov cache` prints."""

from __future__ import annotations

import html
from typing import Any

from ..store.cache import CacheEntry, compiled_bytes
from ..store.manifest import Report

COLUMNS = (
    "checkpoint",
    "recipe",
    "disk MiB (IR + compiled)",
    "torch s/step",
    "s/step",
    "speed-up",
    "rel L2",
    "PSNR dB",
    "SSIM",
    "peak RSS MiB",
    "optimize s",
)


def entry_label(entry: CacheEntry) -> str:
    return entry.manifest.recipe.label()


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 0.01 or value == 0 else f"{value:.2g}"
    return str(value)


def disk_text(entry: CacheEntry) -> str:
    """`IR + compiled blobs` in MiB, e.g. `3280 + 3310`: both are on the user's disk."""
    blobs = compiled_bytes(entry)
    ir = f"{entry.manifest.disk_bytes / 2**20:.0f}"
    return f"{ir} + {blobs / 2**20:.0f}" if blobs else ir


def entry_row(entry: CacheEntry) -> list[str]:
    m = entry.manifest
    r = m.report or Report()
    return [
        m.checkpoint_name,
        entry_label(entry),
        disk_text(entry),
        _fmt(r.torch_s_per_step),
        _fmt(r.s_per_step),
        _fmt(r.speedup) + ("x" if r.speedup is not None else ""),
        _fmt(r.rel_l2, 3),
        _fmt(r.psnr_db, 1),
        _fmt(r.ssim, 3),
        _fmt(r.peak_rss_mib, 0),
        _fmt(r.optimize_s, 0),
    ]


def total_text(total_bytes: int) -> str:
    return f"The cache folder holds {total_bytes / 2**30:.2f} GiB in all (every IR and compiled blob)."


def entries_html(entries: list[CacheEntry], total_bytes: int | None = None) -> str:
    total = f"<p>{html.escape(total_text(total_bytes))}</p>" if total_bytes is not None else ""
    if not entries:
        return f"<p>No optimized UNets in the cache yet.</p>{total}"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in entry_row(e)) + "</tr>" for e in entries
    )
    return f"<table class='sd-ov-entries'><tr>{head}</tr>{rows}</table>{total}"


def report_html(entry: CacheEntry) -> str:
    """The end of an Optimize run: the numbers, and what they were measured on."""
    r = entry.manifest.report or Report()
    m = r.measure or {}
    lines = [f"<b>{html.escape(entry_label(entry))}</b> on {html.escape(r.device or '?')}: ready"]
    if r.speedup is not None:
        lines.append(
            f"{r.s_per_step:.2f} s per UNet step against torch's {r.torch_s_per_step:.2f} s "
            f"(<b>{r.speedup:.2f}x</b>) at {m.get('width')}x{m.get('height')}, batch {m.get('batch')}; "
            f"relative L2 of the UNet output against torch {r.rel_l2:.3g}"
        )
    if r.psnr_db is not None:
        lines.append(f"Sample picture against torch: PSNR {r.psnr_db:.1f} dB, SSIM {r.ssim:.3f}")
    lines.append(
        f"{disk_text(entry)} MiB on disk (IR + compiled blobs); optimize took {r.optimize_s or 0:.0f} s; "
        f"peak memory {r.peak_rss_mib or 0:.0f} MiB"
        + (f" ({html.escape(r.peak_phase)}; {r.start_rss_mib:.0f} MiB when it began)" if r.peak_phase else "")
    )
    return "<br>".join(lines)


def entry_text(entry: CacheEntry) -> str:
    """One line per entry for `python -m sd_ov cache`."""
    m, r = entry.manifest, entry.manifest.report
    speed = (
        f"  {r.speedup:.2f}x torch, rel L2 {r.rel_l2:.3g}" if r is not None and r.speedup is not None else ""
    )
    return f"{entry.path}  {m.checkpoint_name}  {m.recipe.name()}  {disk_text(entry)} MiB{speed}"
