"""The compiled-model base every part shares: compile once, give buffers back, keep the model."""

from __future__ import annotations

import torch

from sd_ov.runtime.compiled import CompiledPart
from sd_ov.runtime.text_encoder import OVTextEncoder
from sd_ov.runtime.vae import OVVae
from sd_ov.serve import engine

from ..conftest import unet_inputs


def test_every_part_shares_the_base(tiny_entry):
    unet = engine.open_unet(tiny_entry, cache_compiled=False)
    assert isinstance(unet, CompiledPart) and issubclass(OVVae, CompiledPart)
    assert issubclass(OVTextEncoder, CompiledPart)


def test_release_memory_keeps_the_model_and_its_outputs(tiny_entry):
    messages = []
    unet = engine.open_unet(tiny_entry, cache_compiled=False, progress=lambda m, f: messages.append(m))
    inputs = unet_inputs(2, 16, 16, 77, 64, seed=4)
    before = unet(*inputs)
    assert unet.release_memory() == 1  # the dynamic model's buffers
    assert torch.equal(unet(*inputs), before)
    assert [m for m in messages if m.startswith("compiling")] == [
        "compiling the OpenVINO UNet for dynamic shapes on CPU"
    ]
    unet.drop_compiled()
    assert unet.release_memory() == 0 and unet.compiled_shapes == []
    assert torch.equal(unet(*inputs), before)  # compiled again
    assert len([m for m in messages if m.startswith("compiling")]) == 2


class RefusingModel:
    """A compiled model whose plugin does not implement release_memory (as some plugins may not)."""

    def release_memory(self) -> None:
        raise RuntimeError("Not implemented")


def test_a_plugin_without_release_memory_keeps_its_buffers_and_the_job_goes_on(tiny_entry, monkeypatch):
    unet = engine.open_unet(tiny_entry, cache_compiled=False)
    monkeypatch.setattr(unet, "compiled_models", lambda: [RefusingModel()])
    assert unet.release_memory() == 0
