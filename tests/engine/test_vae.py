"""The VAE on OpenVINO (the real ldm Encoder/Decoder, tiny): decode and encode equal torch's,
the in-graph pixels equal the webui's arithmetic, and the entry is cached apart from the UNets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sd_ov.optimize import run as optimize
from sd_ov.runtime import vae
from sd_ov.serve.engine import weights_hash
from sd_ov.store import cache

from ..conftest import TinyAutoencoderKL


@pytest.fixture(scope="module")
def tiny_vae():
    return TinyAutoencoderKL()


@pytest.fixture(scope="module")
def vae_entry(tiny_vae, tmp_path_factory):
    root = tmp_path_factory.mktemp("vae-cache")
    return vae.prepare_vae_entry(tiny_vae, root, "tinyckpt", weights_hash(tiny_vae)), root


def test_decode_and_encode_match_torch_at_two_sizes(tiny_vae, vae_entry):
    entry, _ = vae_entry
    ov_vae = vae.OVVae(entry, cache_compiled=False)
    gen = torch.Generator().manual_seed(1)
    for h, w in ((8, 8), (6, 10)):  # one dynamic model serves both
        z = torch.randn(1, 4, h, w, generator=gen)
        with torch.no_grad():
            expected = tiny_vae.decode(z)
        got = ov_vae.decode(z)
        assert got.shape == expected.shape == (1, 3, 2 * h, 2 * w)  # this tiny VAE scales by 2
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-3), (got - expected).abs().max()
        x = torch.rand(2, 3, 2 * h, 2 * w, generator=gen) * 2 - 1
        with torch.no_grad():
            moments = tiny_vae.encode_moments(x)
        assert torch.allclose(ov_vae.encode(x), moments, atol=1e-4, rtol=1e-3)


def test_pixels_made_in_the_graph_equal_the_webuis_arithmetic(tiny_vae, vae_entry):
    entry, _ = vae_entry
    ov_vae = vae.OVVae(entry, cache_compiled=False)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * 3  # values beyond [-1, 1]
    with torch.no_grad():
        decoded = tiny_vae.decode(z)
    webui = (255.0 * torch.clamp((decoded + 1.0) / 2.0, 0.0, 1.0)).numpy()
    webui = np.moveaxis(webui, 1, 3).astype(np.uint8)
    pixels = ov_vae.decode_to_pixels(z)
    assert pixels.dtype == np.uint8 and pixels.shape == webui.shape == (2, 16, 16, 3)
    differs = np.abs(pixels.astype(int) - webui.astype(int))
    assert differs.max() <= 1 and (differs > 0).mean() < 0.01  # f32 rounding at level edges only


def test_the_vae_entry_is_cached_and_not_listed_as_a_recipe(tiny_vae, vae_entry):
    entry, root = vae_entry
    assert entry.manifest.component == "vae" and entry.manifest.unet is None
    assert entry.path.name.startswith("vae-")
    again = vae.prepare_vae_entry(tiny_vae, root, "tinyckpt", weights_hash(tiny_vae))
    assert again.path == entry.path and again.manifest.created == entry.manifest.created  # not re-exported
    assert [e.path for e in cache.list_entries(root)] == [entry.path]
    assert optimize.recipe_entries(root) == []
    other = cache.EntryKey("tinyckpt", entry.manifest.checkpoint_hash, component="unet")
    assert cache.find(root, other) == (None, None)  # another folder: a UNet is never read as a VAE


def test_the_vae_precision_choice_per_device():
    assert vae.vae_precision("CPU", "f32") == "f32" and vae.vae_precision("CPU", "bf16") == "bf16"
    assert vae.vae_precision("GPU", "bf16") == "f32"  # bf16 is a CPU choice; never f16 anywhere
    assert vae.vae_precision("AUTO:GPU,CPU", "auto") == "f32"
    assert vae.vae_precision("CPU", "auto") in ("f32", "bf16")
    with pytest.raises(ValueError, match="one of auto, f32, bf16"):
        vae.vae_precision("CPU", "f16")


def test_a_bf16_decode_that_gives_nan_runs_again_at_f32_and_says_so(tiny_vae, vae_entry):
    """A latent with a NaN gives NaN at any precision: the bf16 model is dropped, the decode runs
    again at f32 (still NaN here: the host then decodes on torch), and `fell_back` says why."""
    entry, _ = vae_entry
    ov_vae = vae.OVVae(entry, precision="bf16", cache_compiled=False)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    assert torch.isfinite(ov_vae.decode(z)).all() and ov_vae.fell_back is None
    z[0, 0, 0, 0] = float("nan")
    assert not torch.isfinite(ov_vae.decode(z)).all()
    assert ov_vae.precision == "f32" and ov_vae.fell_back == "bf16 gave NaN/inf, f32 from then on"
    z[0, 0, 0, 0] = 0.0
    with torch.no_grad():
        assert torch.allclose(ov_vae.decode(z), tiny_vae.decode(z), atol=1e-4, rtol=1e-3)  # f32 now


def test_the_int8_decoder_is_an_entry_beside_the_vaes_and_a_cancel_leaves_none(tiny_vae, vae_entry):
    """`vae_int8`: NNCF quantizes the FP32 decoder on the latents given and the FP32 encoder on the
    host's pictures of them, the fidelity of both is in the manifest, the FP32 entry is untouched,
    and OVVae decodes and encodes with them; cancelled halfway, nothing is written."""
    from sd_ov.errors import Cancelled
    from sd_ov.optimize import metrics, vae_int8

    entry, root = vae_entry
    files_before = dict(entry.manifest.files)
    gen = torch.Generator().manual_seed(3)
    latents = [torch.randn(1, 4, 8, 8, generator=gen) * 3 for _ in range(2)]
    with torch.no_grad():
        pictures = [tiny_vae.decode(z).numpy() for z in latents]

    def cancel(message: str, fraction: float) -> None:
        if "measuring" in message:
            raise Cancelled("interrupted by the user")

    with pytest.raises(Cancelled):
        vae_int8.quantize_vae_decoder(entry, [z.numpy() for z in latents], pictures, progress=cancel)
    assert vae_int8.find_int8_decoder(entry) is None
    assert [p.name for p in entry.path.parent.iterdir() if p.is_dir()] == [entry.path.name]

    decoder = vae_int8.quantize_vae_decoder(
        entry, [z.numpy() for z in latents], pictures, encoder_min_psnr_db=0
    )
    assert vae_int8.find_int8_decoder(entry).path == decoder.path != entry.path
    report = decoder.manifest.report
    assert 15 < report.psnr_db < 100 and 15 < report.encoder_psnr_db < 100  # quantized: close, not equal
    assert report.label == "INT8 VAE decoder and encoder" and set(decoder.manifest.models) == {
        "decoder",
        "encoder",
    }
    assert cache.validate(entry.path).manifest.files == files_before
    served = vae.OVVae(entry, cache_compiled=False, decoder_entry=decoder)
    z = torch.randn(1, 4, 6, 10, generator=gen) * 3
    with torch.no_grad():
        expected = tiny_vae.decode(z)
    assert served.decoder_int8 and 0 < metrics.rel_l2(served.decode(z), expected) < 0.2
    x = torch.rand(1, 3, 12, 20, generator=gen) * 2 - 1
    with torch.no_grad():
        expected = tiny_vae.encode_moments(x)
    assert served.encoder_int8 and 0 < metrics.rel_l2(served.encode(x), expected) < 0.2
    # an INT8 encoder further from the float one than the floor is not kept: the float one encodes
    floor = report.encoder_psnr_db + 1
    decoder_only = vae_int8.quantize_vae_decoder(
        entry, [z.numpy() for z in latents], pictures, encoder_min_psnr_db=floor
    )
    assert set(decoder_only.manifest.models) == {"decoder"} and "encoder" not in str(
        decoder_only.manifest.files
    )
    assert decoder_only.manifest.report.label.startswith("INT8 VAE decoder (encoder float: INT8 ")
    served = vae.OVVae(entry, cache_compiled=False, decoder_entry=decoder_only)
    with torch.no_grad():  # the encoder is the FP32 entry's
        assert not served.encoder_int8 and torch.allclose(served.encode(x), expected, atol=1e-4, rtol=1e-3)


def test_a_checkpoints_vae_is_read_from_the_file_alone(tiny_vae, tmp_path):
    """Forge's VAE class is its own: the export builds ldm's modules from the file's
    `first_stage_model.*` weights, their ddconfig read off the shapes, exported only when the
    entry is missing; the file's VAE decodes as the VAE written to it does."""
    from safetensors.torch import save_file

    state = {f"first_stage_model.{k}": v.contiguous() for k, v in tiny_vae.state_dict().items()}
    state["model.diffusion_model.out.2.bias"] = torch.zeros(4)  # another part of the checkpoint
    path = tmp_path / "model.safetensors"
    save_file(state, path)
    made = []

    def from_file():
        made.append(1)
        return vae.vae_from_checkpoint(path)

    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(vae.vae_from_checkpoint(path).decode(z), tiny_vae.decode(z), atol=1e-6)
    entry = vae.prepare_vae_entry(from_file, tmp_path / "cache", "model-vae-baked", "abc")
    again = vae.prepare_vae_entry(from_file, tmp_path / "cache", "model-vae-baked", "abc")
    assert made == [1] and again.path == entry.path
    save_file({"model.diffusion_model.out.2.bias": torch.zeros(4)}, tmp_path / "unet_only.safetensors")
    with pytest.raises(Exception, match="holds no VAE"):
        vae.vae_from_checkpoint(tmp_path / "unet_only.safetensors")
