"""Shared fixtures: tiny UNets of the real ldm class, with seeded random weights."""

from __future__ import annotations

import os

import pytest
import torch

from sd_ov.graphs.ldm_unet import build_unet
from sd_ov.runtime.ov_core import get_core
from sd_ov.serve import engine

if os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") == str(os.cpu_count()):
    # One pytest-xdist worker per core: each computes on one thread (torch and OpenVINO), so two
    # workers do not spin against each other's threads. No test times anything.
    torch.set_num_threads(1)
    get_core().set_property("CPU", {"INFERENCE_NUM_THREADS": 1})

# NNCF compresses weights with OpenVINO-compiled kernels, one compile per weight shape and mode:
# worth it for a real UNet's weights, not for the test UNets' (366 compiles, 15 s of 14 Optimize
# tests; test_compress.py 84 → 73 s). Its numpy path computes the same rounding (NNCF's own switch).
os.environ.setdefault("NNCF_DISABLE_OPTIMIZED_COMPRESSION", "1")

# SD1 architecture (conv proj, heads by count), small enough for CI: 3 levels, attention everywhere.
TINY_SD1 = dict(
    image_size=32,
    in_channels=4,
    out_channels=4,
    model_channels=32,
    attention_resolutions=[4, 2, 1],
    num_res_blocks=1,
    channel_mult=[1, 2, 4],
    num_heads=2,
    use_spatial_transformer=True,
    transformer_depth=1,
    context_dim=64,
    use_checkpoint=True,
    legacy=False,
)
# SD2 architecture (linear proj, heads by channel count).
TINY_SD2 = dict(
    image_size=32,
    in_channels=4,
    out_channels=4,
    model_channels=32,
    attention_resolutions=[4, 2, 1],
    num_res_blocks=1,
    channel_mult=[1, 2, 4],
    num_head_channels=16,
    use_spatial_transformer=True,
    use_linear_in_transformer=True,
    transformer_depth=1,
    context_dim=96,
    use_checkpoint=True,
    legacy=False,
)
# The smallest UNet that still has every block kind, for cache tests that export repeatedly.
MICRO = dict(
    image_size=16,
    in_channels=4,
    out_channels=4,
    model_channels=32,
    attention_resolutions=[2],
    num_res_blocks=1,
    channel_mult=[1, 2],
    num_heads=2,
    use_spatial_transformer=True,
    transformer_depth=1,
    context_dim=32,
    use_checkpoint=True,
    legacy=False,
)


# MICRO with its attention at full resolution, where token merging acts: for the recipe tests
# whose time is mostly NNCF and tracing.
MICRO_TOME = dict(MICRO, attention_resolutions=[1])


def TinyAutoencoderKL():  # noqa: N802 - reads as the class it stands in for
    """ldm's AutoencoderKL modules, tiny, seeded (a factor-2 VAE with the mid-block attention)."""
    from sd_ov.runtime.vae import SD_DDCONFIG, AutoencoderParts

    return AutoencoderParts(dict(SD_DDCONFIG, resolution=64, ch=32, ch_mult=[1, 2], num_res_blocks=1), seed=0)


def TinyCLIPTextModel(hidden_size: int = 64):  # noqa: N802 - reads as the class it stands in for
    """transformers' CLIPTextModel (SD1.x's text tower), tiny, seeded; `hidden_size` is the UNet's
    context width."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(
        hidden_size=hidden_size,
        intermediate_size=128,
        num_attention_heads=4,
        num_hidden_layers=3,
        vocab_size=1000,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
    )
    return CLIPTextModel(config).eval()


def tiny_tokenizer(folder):
    """transformers' CLIPTokenizerFast over a byte-level vocabulary without merges."""
    import json

    from transformers import CLIPTokenizerFast
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({f"{c}</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizerFast(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"))


def unet_inputs(
    batch: int, h: int, w: int, tokens: int, context_dim: int, in_channels: int = 4, seed: int = 0
):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_channels, h, w, generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen).float()
    c = torch.randn(batch, tokens, context_dim, generator=gen)
    return x, t, c


@pytest.fixture(scope="session")
def tiny_unet():
    return build_unet(TINY_SD1, seed=0)


@pytest.fixture(scope="session")
def micro_unet():
    return build_unet(MICRO, seed=0)


@pytest.fixture(scope="session")
def micro_tome_unet():
    return build_unet(MICRO_TOME, seed=0)


@pytest.fixture(scope="session")
def tiny_entry(tiny_unet, tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    return engine.prepare_entry(tiny_unet, root, "tiny", engine.weights_hash(tiny_unet)).entry


def tiny_open_clip_model(
    width: int = 64, heads: int = 4, embed_dim: int = 24, vocab_size: int = 1000, seed: int = 0
):
    """open_clip's real CLIP class, tiny and seeded (no weights to download): its text tower is
    what the webui's SDXL (bigG) and SD2 (ViT-H) embedders run. Needs open_clip."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    tiny = CLIP(
        embed_dim=embed_dim,
        vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=16),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=vocab_size, width=width, heads=heads, layers=3),
    )
    with torch.no_grad():  # open_clip starts some of these at zero or one; random reads better
        for param in tiny.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return tiny


def embedder_around(model, make):
    """`make()` (an embedder class of the webui's) with open_clip's model factory answering `model`."""
    import open_clip

    real = open_clip.create_model_and_transforms
    open_clip.create_model_and_transforms = lambda *a, **k: (model, None, None)
    try:
        return make().eval()
    finally:
        open_clip.create_model_and_transforms = real


def tiny_open_clip_embedder(model=None):
    """sgm's real FrozenOpenCLIPEmbedder2 as the webui's SDXL config makes it (penultimate layer,
    pooled output, not legacy) around a tiny seeded open_clip model (`model`, default
    `tiny_open_clip_model()`; no weights to download). Needs sgm and open_clip (the webui's venv)."""
    from sgm.modules.encoders.modules import FrozenOpenCLIPEmbedder2

    return embedder_around(
        model if model is not None else tiny_open_clip_model(),
        lambda: FrozenOpenCLIPEmbedder2(
            arch="tiny",
            version=None,
            device="cpu",
            layer="penultimate",
            always_return_pooled=True,
            legacy=False,
        ),
    )


def bigg_tokens(batch: int, seed: int) -> torch.Tensor:
    """Start token, words, the end token (the highest id), zero padding: as the webui's SDXL
    OpenCLIP tokens are laid out (id_pad = 0)."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(batch, 77, dtype=torch.long)
    for row in range(batch):
        length = int(torch.randint(3, 70, (1,), generator=gen))
        tokens[row, 0] = 997
        tokens[row, 1:length] = torch.randint(1, 990, (length - 1,), generator=gen)
        tokens[row, length] = 999
    return tokens


# The webui stand-in's modules on sys.path (tests/webui/harness.py): the engine's tests of the
# webui's own forward use them too; the adapter's fixtures are in tests/webui/conftest.py.
from .webui.harness import stub_modules  # noqa: E402, F401
