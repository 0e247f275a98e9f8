"""Giving back the mapped IR pages after a compile: less resident memory, the same outputs."""

from __future__ import annotations

import sys

import pytest
import torch

from sd_ov import engine
from sd_ov.memory import release_mapped_file

from .conftest import unet_inputs


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise on /proc/self/maps: Linux only")
def test_the_compiled_unet_keeps_working_after_its_ir_pages_are_released(tiny_entry):
    runtime = engine.open_unet(tiny_entry, cache_compiled=False)
    inputs = unet_inputs(2, 16, 16, 77, 64, seed=3)
    before = runtime(*inputs)
    bin_path = tiny_entry.xml_path.with_suffix(".bin")
    assert release_mapped_file(bin_path) >= bin_path.stat().st_size  # the mapping is still there
    assert torch.equal(runtime(*inputs), before)
    runtime.prepare(2, 8, 8)  # a new shape compiles from the graph, its pages read back from the file
    assert release_mapped_file(tiny_entry.path / "no-such.bin") == 0
