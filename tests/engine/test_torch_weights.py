"""Freeing the torch UNet's weights while OpenVINO serves: storage gone, restored bit-exactly from
the checkpoint file, refused when the file cannot give the same bytes back."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
from safetensors.torch import save_file

from sd_ov.graphs.ldm_unet import CHECKPOINT_UNET_PREFIX, build_unet
from sd_ov.runtime.memory import rss_mib
from sd_ov.runtime.torch_weights import (
    CheckpointTensors,
    ModuleWeights,
    ReleasedWeights,
    WeightsNotReleasable,
    WeightsRestoreError,
    is_released,
)

from ..conftest import MICRO, TINY_SD1, unet_inputs


def write_checkpoint(unet: torch.nn.Module, path, dtype=torch.float16) -> CheckpointTensors:
    """A checkpoint as the webui reads it: the UNet under its prefix, plus another model's key."""
    state = {CHECKPOINT_UNET_PREFIX + k: v.to(dtype).contiguous() for k, v in unet.state_dict().items()}
    state["first_stage_model.decoder.conv_in.weight"] = torch.zeros(2, 2)
    if str(path).endswith(".safetensors"):
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    return CheckpointTensors(path, CHECKPOINT_UNET_PREFIX)


def loaded_like_the_webui(config: dict, source: CheckpointTensors) -> torch.nn.Module:
    """The UNet as the webui holds it: built, then loaded from the (fp16) file and cast to f32."""
    unet = build_unet(config, seed=None)
    with source.reader() as read, torch.no_grad():
        for name, param in unet.named_parameters():
            param.copy_(read(name))
    return unet


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_release_frees_every_weight_and_restore_gives_the_same_bytes(tmp_path, suffix):
    source = write_checkpoint(build_unet(TINY_SD1, seed=0), tmp_path / f"model{suffix}")
    unet = loaded_like_the_webui(TINY_SD1, source)
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    params_before = dict(unet.named_parameters())
    inputs = unet_inputs(1, 8, 8, 77, 64)
    with torch.no_grad():
        expected = unet(*inputs)

    released = ReleasedWeights.release(unet, source)
    assert is_released(unet)
    assert all(p.untyped_storage().nbytes() == 0 for p in unet.parameters())
    assert released.freed_bytes == sum(t.numel() * 4 for t in before.values())
    assert all(p.shape == before[n].shape for n, p in unet.named_parameters())  # metadata stays

    released.restore()
    assert not is_released(unet)
    assert dict(unet.named_parameters()) == params_before  # the same Parameter objects
    assert all(torch.equal(p, before[n]) for n, p in unet.named_parameters())
    with torch.no_grad():
        assert torch.equal(unet(*inputs), expected)
    released.restore()  # twice is harmless


def test_weights_changed_in_memory_are_not_released(tmp_path):
    source = write_checkpoint(build_unet(MICRO, seed=0), tmp_path / "model.safetensors")
    unet = loaded_like_the_webui(MICRO, source)
    with torch.no_grad():
        unet.out[-1].weight.add_(0.01)  # e.g. a LoRA merged into the weights
    with pytest.raises(WeightsNotReleasable, match="differs"):
        ReleasedWeights.release(unet, source)
    assert not is_released(unet)


def test_a_checkpoint_without_the_unet_refuses_and_frees_nothing(tmp_path):
    source = write_checkpoint(build_unet(MICRO, seed=0), tmp_path / "model.safetensors")
    unet = loaded_like_the_webui(MICRO, source)
    other = CheckpointTensors(source.path, "model.other_prefix.")
    with pytest.raises(WeightsNotReleasable, match="cannot check"):
        ReleasedWeights.release(unet, other)
    assert not is_released(unet)


def test_a_checkpoint_changed_after_the_release_is_refused(tmp_path):
    source = write_checkpoint(build_unet(MICRO, seed=0), tmp_path / "model.safetensors")
    unet = loaded_like_the_webui(MICRO, source)
    released = ReleasedWeights.release(unet, source)
    write_checkpoint(build_unet(MICRO, seed=1), source.path)
    os.utime(source.path, ns=(1, 1))
    with pytest.raises(WeightsRestoreError, match="changed"):
        released.restore()


def test_release_gives_the_memory_back(tmp_path):
    """A UNet of ~190 MB in f32: RSS falls by most of it, and rises again on restore."""
    config = dict(MICRO, model_channels=192, channel_mult=[1, 2, 4])
    source = write_checkpoint(build_unet(config, seed=0), tmp_path / "big.safetensors")
    unet = loaded_like_the_webui(config, source)
    size_mib = sum(p.numel() * 4 for p in unet.parameters()) / 2**20
    assert size_mib > 150
    before = rss_mib()
    released = ReleasedWeights.release(unet, source)
    freed = before - rss_mib()
    assert freed > 0.8 * size_mib, f"freed {freed:.0f} of {size_mib:.0f} MiB"
    released.restore()
    assert rss_mib() - (before - freed) > 0.8 * size_mib


def test_reading_or_loading_the_state_of_freed_weights_brings_them_back(tmp_path):
    """A host that copies the module's state (the webui's base-VAE backup) or loads other weights
    into it (a VAE switch) while the weights are freed gets real tensors, never empty storages."""
    source = write_checkpoint(build_unet(MICRO, seed=0), tmp_path / "model.safetensors")
    parent = torch.nn.ModuleDict({"unet": loaded_like_the_webui(MICRO, source)})
    expected = {k: v.clone() for k, v in parent.state_dict().items()}
    weights = ModuleWeights(parent["unet"], source)
    assert weights.release()
    copied = parent.state_dict()  # the parent recurses into the freed module
    assert weights.resident and all(torch.equal(copied[k], v) for k, v in expected.items())

    assert weights.release() and is_released(parent["unet"])
    other = {k: torch.full_like(v, 0.5) for k, v in expected.items()}
    parent.load_state_dict(other)
    assert weights.resident and all(torch.equal(v, other[k]) for k, v in parent.state_dict().items())
    assert "state_dict" not in vars(parent["unet"])  # the guards go with the release


def test_the_webuis_lowvram_moves_leave_freed_weights_alone(tmp_path):
    """The webui's --medvram/--lowvram hooks call `module.to(devices.device)`; on a CPU that is a
    no-op and must neither touch the freed storages nor bring a copy back."""
    source = write_checkpoint(build_unet(MICRO, seed=0), tmp_path / "model.safetensors")
    unet = loaded_like_the_webui(MICRO, source)
    weights = ModuleWeights(unet, source)
    assert weights.release()
    unet.to("cpu")
    unet.to(torch.float32)
    assert is_released(unet) and not weights.resident
    weights.ensure()
    assert not is_released(unet)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_the_check_and_the_restore_keep_few_file_pages_resident(tmp_path, suffix, monkeypatch):
    """Reading a checkpoint maps it: without giving pages back, checking a UNet against its file
    makes the whole file resident beside the UNet (SDXL: 10 + 10 GB). With the pages given back
    every RELEASE_PAGES_EVERY_BYTES, the file's resident part stays near that; the weights read
    are still the file's, bit-exactly."""
    import sd_ov.runtime.torch_weights as tw
    from sd_ov.runtime.memory import mapped_resident_bytes

    if not os.path.exists("/proc/self/smaps"):
        pytest.skip("resident pages per mapping are read from /proc (Linux)")
    source = write_checkpoint(build_unet(TINY_SD1, seed=0), tmp_path / f"model{suffix}", dtype=torch.float32)
    size = os.path.getsize(source.path)
    unet = loaded_like_the_webui(TINY_SD1, source)
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}

    def most_resident(every: int) -> int:
        monkeypatch.setattr(tw, "RELEASE_PAGES_EVERY_BYTES", every)
        seen, unsampled = [0], [0]
        real = tw.CheckpointTensors._reader

        @contextlib.contextmanager
        def watched(self):
            with real(self) as read:

                def get(name):
                    tensor = read(name)
                    # /proc/self/smaps costs ~20 ms a read: sampled every 1/32 of the file, which
                    # still sees each rise to `every` (the smallest asked for is 1/8)
                    unsampled[0] += tensor.nbytes
                    if unsampled[0] >= size // 32:
                        unsampled[0] = 0
                        seen[0] = max(seen[0], mapped_resident_bytes(self.path))
                    return tensor

                yield get

        monkeypatch.setattr(tw.CheckpointTensors, "_reader", watched)
        released = ReleasedWeights.release(unet, source)
        released.restore()
        monkeypatch.setattr(tw.CheckpointTensors, "_reader", real)
        return seen[0]

    assert most_resident(2**40) > 0.8 * size  # never given back: the whole file (the test can fail)
    assert most_resident(size // 8) < 0.4 * size
    assert all(torch.equal(p, before[n]) for n, p in unet.named_parameters())
