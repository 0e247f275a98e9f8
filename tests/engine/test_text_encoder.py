"""The CLIP text encoder on OpenVINO (a real transformers CLIPTextModel, tiny, seeded): every
clip skip from one graph equals torch's, token embeddings the host changed (textual inversion)
go through, and the entry is cached apart from the UNets."""

from __future__ import annotations

import pytest
import torch

from sd_ov.optimize import run as optimize
from sd_ov.runtime import text_encoder
from sd_ov.serve.engine import weights_hash
from sd_ov.store import cache

from ..conftest import TinyCLIPTextModel

# Stated tolerance: f32 OpenVINO against f32 torch, 3 layers (measured ~2e-6).
ATOL = 1e-4


@pytest.fixture(scope="module")
def tiny_clip():
    return TinyCLIPTextModel()


@pytest.fixture(scope="module")
def te_entry(tiny_clip, tmp_path_factory):
    root = tmp_path_factory.mktemp("te-cache")
    return text_encoder.prepare_text_encoder_entry(tiny_clip, root, "tinyckpt", weights_hash(tiny_clip)), root


def test_every_clip_skip_matches_torch_at_two_lengths(tiny_clip, te_entry):
    entry, _ = te_entry
    ov_te = text_encoder.OVTextEncoder(entry, cache_compiled=False)
    assert ov_te.layers == 3
    gen = torch.Generator().manual_seed(1)
    for batch, tokens in ((2, 77), (1, 40)):
        ids = torch.randint(0, 1000, (batch, tokens), generator=gen)
        with torch.no_grad():
            ref = tiny_clip(input_ids=ids, output_hidden_states=True)
            embeds = text_encoder.token_embedding(tiny_clip)(ids)
            expected = {1: ref.last_hidden_state}
            for skip in (2, 3):  # the webui's own arithmetic for clip skip > 1
                expected[skip] = tiny_clip.text_model.final_layer_norm(ref.hidden_states[-skip])
        for skip, want in expected.items():
            got = ov_te.hidden(embeds, skip)
            assert got.shape == want.shape == (batch, tokens, 64)
            assert torch.allclose(got, want, atol=ATOL), (skip, (got - want).abs().max())
    with pytest.raises(ValueError, match="clip skip 4"):
        ov_te.hidden(embeds, 4)


def test_changed_embeddings_are_what_the_graph_encodes(tiny_clip, te_entry):
    """Textual inversion replaces some token vectors before the transformer: the graph takes
    embeddings, so the result follows them exactly as torch's does."""
    entry, _ = te_entry
    ov_te = text_encoder.OVTextEncoder(entry, cache_compiled=False)
    ids = torch.randint(0, 1000, (1, 77), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        embeds = text_encoder.token_embedding(tiny_clip)(ids)
        embeds[0, 1:4] = torch.randn(3, 64, generator=torch.Generator().manual_seed(3))
        pos = tiny_clip.text_model.embeddings.position_embedding.weight[:77]
        h = embeds + pos
        mask = torch.full((77, 77), float("-inf")).triu(1)[None, None]
        for layer in tiny_clip.text_model.encoder.layers:
            h = layer(h, None, mask)[0] if _takes_causal_mask(layer) else layer(h, mask)[0]
        want = tiny_clip.text_model.final_layer_norm(h)
    got = ov_te.hidden(embeds)
    assert torch.allclose(got, want, atol=ATOL), (got - want).abs().max()
    plain = ov_te.hidden(text_encoder.token_embedding(tiny_clip)(ids).detach())
    assert (got - plain).abs().max() > 1e-2  # the changed vectors did change the output


def _takes_causal_mask(layer) -> bool:
    import inspect

    return "causal_attention_mask" in inspect.signature(layer.forward).parameters


def test_the_entry_is_cached_apart_from_unets(tiny_clip, te_entry):
    entry, root = te_entry
    assert entry.manifest.component == "text_encoder"
    again = text_encoder.prepare_text_encoder_entry(tiny_clip, root, "tinyckpt", weights_hash(tiny_clip))
    assert again.path == entry.path
    assert optimize.recipe_entries(root) == []  # not offered as a UNet recipe
    assert (
        cache.find(root, cache.EntryKey("tinyckpt", weights_hash(tiny_clip), entry.manifest.recipe))[0]
        is None
    )


def test_raw_hidden_states_for_sdxl_clip_l_match_torch(tiny_clip, tmp_path):
    """SDXL's CLIP-L reads `hidden_states[-k]` without the final layer norm (the webui's
    FrozenCLIPEmbedderForSDXLWithCustomWords): its own entry, every layer raw."""
    entry = text_encoder.prepare_text_encoder_entry(tiny_clip, tmp_path, "tinyckpt", "h", kind="clip_hidden")
    assert entry.manifest.component == "text_encoder_hidden"
    ov_te = text_encoder.OVTextEncoder(entry, cache_compiled=False)
    ids = torch.randint(0, 1000, (2, 77), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = tiny_clip(input_ids=ids, output_hidden_states=True).hidden_states
        embeds = text_encoder.token_embedding(tiny_clip)(ids)
    for skip in (1, 2, 3):
        hidden, pooled = ov_te.encode(embeds, skip)
        assert pooled is None
        assert torch.allclose(hidden, ref[-skip], atol=ATOL), (skip, (hidden - ref[-skip]).abs().max())
    normed = tiny_clip.text_model.final_layer_norm(ref[-1])
    assert (ov_te.hidden(embeds, 1) - normed).abs().max() > 1e-2  # raw is not the normed one


def test_int8_weights_are_a_quarter_of_the_file_and_close_to_torch(tiny_clip, tmp_path):
    """INT8 weights (NNCF compress_weights): its own entry beside the FP32 one, its file smaller,
    its output within the stated tolerance of torch (tiny random model: rel. L2 ~1e-2)."""
    fp32 = text_encoder.prepare_text_encoder_entry(tiny_clip, tmp_path, "tinyckpt", "h")
    int8 = text_encoder.prepare_text_encoder_entry(tiny_clip, tmp_path, "tinyckpt", "h", int8_weights=True)
    assert int8.path != fp32.path and int8.manifest.recipe.int8 == "weights"
    assert sorted(p.name for p in int8.path.glob("*.xml")) == ["text_encoder.xml"]  # no stage left
    assert (
        int8.xml_path.with_suffix(".bin").stat().st_size
        < 0.5 * fp32.xml_path.with_suffix(".bin").stat().st_size
    )
    ov_te = text_encoder.OVTextEncoder(int8, cache_compiled=False)
    ids = torch.randint(0, 1000, (1, 77), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        want = tiny_clip(input_ids=ids).last_hidden_state
        embeds = text_encoder.token_embedding(tiny_clip)(ids)
    got = ov_te.hidden(embeds)
    from sd_ov.optimize import metrics

    assert 0 < metrics.rel_l2(got, want) <= 0.05
