"""The GenAI export of the checkpoints whose text encoders are open_clip towers: SDXL
(`StableDiffusionXLPipeline`'s folder: two text encoders and tokenizers; the UNet taking
`text_embeds` and `time_ids`, the size embedding made in the graph) and SD2 (its OpenCLIP ViT-H,
converted to transformers' class). GenAI makes the picture sd-ov makes with the webui's own
conditioning code (sgm's conditioner pieces, ldm's FrozenOpenCLIPEmbedder).

Seeded random tiny models in single-file checkpoints with the webui's keys: sgm's or ldm's
UNetModel, transformers' CLIPTextModel (CLIP-L) and open_clip's text towers in open_clip's
layout. Needs open_clip (and sgm for SDXL, ldm for SD2): a webui's venv with transformers ≥ 4.46
for openvino-tokenizers' converter, and openvino-genai, e.g. Forge's:
`PYTHONPATH=.:<forge>/repositories/generative-models:<a1111>/repositories/stable-diffusion-stability-ai
<forge>/venv/bin/python -m pytest -p no:xdist tests/engine/test_genai_openclip.py`; skipped elsewhere.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sd_ov.optimize import metrics
from sd_ov.optimize.sampling import sample_euler

from ..conftest import (
    TinyAutoencoderKL,
    TinyCLIPTextModel,
    embedder_around,
    tiny_open_clip_embedder,
    tiny_open_clip_model,
    tiny_tokenizer,
)

genai = pytest.importorskip("openvino_genai", reason="openvino-genai is not installed")
pytest.importorskip("openvino_tokenizers", reason="openvino-tokenizers is not installed")
open_clip = pytest.importorskip(
    "open_clip", reason="open_clip (SDXL's and SD2's text towers) is not installed"
)
from .test_genai import SIZE, genai_picture  # noqa: E402 - GenAI's pipeline at f32, after the skips

# GenAI at f32 (genai_picture), as sd-ov's reference runs: on a CPU with AMX, GenAI's default is
# bf16, which alone costs the tiny random models 8-30 dB; at f32 the pictures agree to 60+ dB
SAME_PICTURE_DB = 45
CLIP_L_WIDTH, BIGG_WIDTH, POOLED = 32, 128, 48
TINY_SDXL = dict(
    adm_in_channels=POOLED + 6 * 256,  # the pooled bigG feature and the six size embeddings
    num_classes="sequential",
    in_channels=4,
    out_channels=4,
    model_channels=32,
    attention_resolutions=[4, 2],
    num_res_blocks=1,
    channel_mult=[1, 2, 2],
    num_head_channels=16,
    use_spatial_transformer=True,
    use_linear_in_transformer=True,
    transformer_depth=[0, 1, 1],
    context_dim=CLIP_L_WIDTH + BIGG_WIDTH,
    spatial_transformer_attn_type="softmax",
    legacy=False,
)


def tiny_bigg():
    """sgm's FrozenOpenCLIPEmbedder2 as SDXL's config makes it, around a tiny seeded open_clip
    model (a head per 64 channels, as bigG's)."""
    return tiny_open_clip_embedder(
        tiny_open_clip_model(
            width=BIGG_WIDTH, heads=BIGG_WIDTH // 64, embed_dim=POOLED, vocab_size=600, seed=1
        )
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from safetensors.torch import save_file

    from sd_ov.graphs.ldm_unet import randomize_zero_init

    openaimodel = pytest.importorskip(
        "sgm.modules.diffusionmodules.openaimodel",
        reason="sgm (SDXL's UNet, a webui's venv) is not importable",
    )
    folder = tmp_path_factory.mktemp("genai-sdxl")
    torch.manual_seed(0)
    unet = randomize_zero_init(openaimodel.UNetModel(**TINY_SDXL).eval(), seed=0)
    clip_l, bigg, vae = TinyCLIPTextModel(CLIP_L_WIDTH), tiny_bigg(), TinyAutoencoderKL()
    state = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    state |= {f"first_stage_model.{k}": v for k, v in vae.state_dict().items()}
    state |= {f"conditioner.embedders.0.transformer.{k}": v for k, v in clip_l.state_dict().items()}
    state |= {
        f"conditioner.embedders.1.model.{k}": v
        for k, v in bigg.model.state_dict().items()
        if not k.startswith("visual.")
    }
    path = folder / "tiny-sdxl.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path, clip_l, bigg, tiny_tokenizer(folder / "tokenizer")


def padded(tokenizer):
    """SDXL's second tokenizer: the first, padding with "!" (id 0) as open_clip pads."""
    import copy

    other = copy.deepcopy(tokenizer)
    other.pad_token = "!"
    return other


def sgm_conditioning(clip_l, bigg, tokenizer, prompt: str):
    """(context, y) as sgm's SDXL conditioner makes them for a SIZE² picture: CLIP-L's raw
    penultimate layer beside bigG's (open_clip's own blocks), bigG's pooled feature and sgm's
    ConcatTimestepEmbedderND of the original size, crop corner and target size. An empty prompt
    gives zeros for the text parts (the webui's empty negative prompt)."""
    from sgm.modules.encoders.modules import ConcatTimestepEmbedderND

    def ids(tok) -> torch.Tensor:
        return tok(
            prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids

    with torch.no_grad():
        a = clip_l(input_ids=ids(tokenizer), output_hidden_states=True).hidden_states[-2]
        z = bigg.encode_with_transformer(ids(padded(tokenizer)))
    context, pooled = torch.cat([a, z["penultimate"]], dim=-1), z["pooled"]
    if prompt == "":
        context, pooled = torch.zeros_like(context), torch.zeros_like(pooled)
    sizes = ConcatTimestepEmbedderND(256)
    size = torch.tensor([[SIZE, SIZE]], dtype=torch.float32)
    vector = torch.cat([sizes(size), sizes(torch.zeros(1, 2)), sizes(size)], dim=1)
    return context, torch.cat([pooled, vector], dim=1)


def test_an_sdxl_recipe_makes_sd_ovs_picture_in_genais_xl_pipeline(checkpoint, tmp_path):
    """GenAI's Text2ImagePipeline on the folder (StableDiffusionXLPipeline), TorchGenerator,
    Euler, the same prompt, size and steps, GenAI at f32: >= 45 dB from sd-ov's own picture of the recipe with
    sgm's conditioning; the bigG tower converted to transformers' class gives open_clip's states."""
    from sd_ov.runtime.vae import OVVae
    from sd_ov.serve import engine
    from sd_ov.tools.genai import export_genai
    from sd_ov.tools.genai_source import source_from_checkpoint
    from sd_ov.tools.genai_text import open_clip_text_model_from_checkpoint

    path, clip_l, bigg, tokenizer = checkpoint
    converted = open_clip_text_model_from_checkpoint(path)
    tokens = padded(tokenizer)(
        "a small boat", padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    assert tokens[0, -1] == 0, "bigG's tokens pad with 0 after the end token"
    with torch.no_grad():
        ours = converted(input_ids=tokens, output_hidden_states=True)
        theirs = bigg.encode_with_transformer(tokens)
    assert metrics.rel_l2(ours.hidden_states[-2], theirs["penultimate"]) < 1e-5
    assert metrics.rel_l2(ours.text_embeds, theirs["pooled"]) < 1e-5

    source = source_from_checkpoint(
        path, tmp_path / "cache", tokenizer, unet_config=TINY_SDXL, text_config=clip_l.config, clip_skip=2
    )  # the webui's clip skip 2 (an SD1 habit) does not reach SDXL's encoders: said, not refused
    assert source.clip_skip == 1 and "clip skip 2 does not apply" in source.notes[0]
    out = export_genai(source, tmp_path / "genai-sdxl")
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    parts = {p.parent.name for p in out.glob("*/openvino_model.xml")}
    assert parts == {"unet", "text_encoder", "text_encoder_2", "vae_decoder", "vae_encoder"}
    import openvino as ov

    unet_inputs = {p.any_name for p in ov.Core().read_model(str(out / "unet" / "openvino_model.xml")).inputs}
    assert unet_inputs == {"sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"}
    # the exported UNet, fed GenAI's (text_embeds, time_ids), gives the recipe's output for sgm's y
    core = ov.Core()
    exported = core.compile_model(
        str(out / "unet" / "openvino_model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    recipe = core.compile_model(str(source.unet_entry.ir_path()), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    from sgm.modules.encoders.modules import ConcatTimestepEmbedderND

    gen = torch.Generator().manual_seed(5)
    x, c, pooled = (
        torch.randn(2, 4, 16, 24, generator=gen),
        torch.randn(2, 77, 160, generator=gen),
        torch.randn(2, POOLED, generator=gen),
    )
    time_ids = torch.tensor([[1024.0, 768, 16, 0, 896, 1152], [512, 512, 0, 0, 512, 512]])
    sizes = ConcatTimestepEmbedderND(256)
    y = torch.cat([pooled, *(sizes(time_ids[:, i : i + 2]) for i in (0, 2, 4))], dim=1)
    t = np.array([500, 500], np.int64)
    got = exported(
        {
            "sample": x.numpy(),
            "timestep": t,
            "encoder_hidden_states": c.numpy(),
            "text_embeds": pooled.numpy(),
            "time_ids": time_ids.numpy(),
        }
    )[0]
    want = recipe({"x": x.numpy(), "timesteps": t.astype(np.float32), "context": c.numpy(), "y": y.numpy()})[
        0
    ]
    assert metrics.rel_l2(torch.from_numpy(got), torch.from_numpy(want)) < 1e-5

    prompt, seed, steps, cfg = "a red fox in the snow", 42, 4, 7.0
    made = genai_picture(out, prompt, seed, steps, cfg, negative_prompt=None)

    cond, y_cond = sgm_conditioning(clip_l, bigg, tokenizer, prompt)
    uncond, y_uncond = sgm_conditioning(clip_l, bigg, tokenizer, "")
    y = torch.cat([y_cond, y_uncond])
    unet = engine.open_unet(source.unet_entry)
    noise = torch.randn(1, 4, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(seed))
    latent = sample_euler(
        lambda x, t, c: unet(x, t, c, y), noise, cond, uncond, steps=steps, cfg_scale=cfg
    ).latent
    decoded = OVVae(source.vae_entry).decode(latent / source.vae_scale)
    ours = ((decoded / 2 + 0.5).clamp(0, 1) * 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    db = metrics.psnr(made, ours)
    print(f"SDXL: GenAI vs sd-ov {db:.1f} dB")
    assert db >= SAME_PICTURE_DB, db
    assert made.std() > 1, "a picture, not a flat colour"


SD2_WIDTH = 128


@pytest.fixture(scope="module")
def sd2_checkpoint(tmp_path_factory):
    """A tiny SD2-architecture checkpoint (ldm's UNet, its text tower open_clip's under
    cond_stage_model.model.), and ldm's FrozenOpenCLIPEmbedder around the same tower."""
    from safetensors.torch import save_file

    from sd_ov.graphs.ldm_unet import build_unet

    from ..conftest import TINY_SD2

    encoders = pytest.importorskip("ldm.modules.encoders.modules", reason="ldm (the webui's SD2 code)")
    model = tiny_open_clip_model(width=SD2_WIDTH, heads=SD2_WIDTH // 64, embed_dim=32, vocab_size=600, seed=2)
    embedder = embedder_around(
        model,
        lambda: encoders.FrozenOpenCLIPEmbedder(arch="tiny", version=None, device="cpu", layer="penultimate"),
    )
    unet, vae = build_unet(dict(TINY_SD2, context_dim=SD2_WIDTH), seed=0), TinyAutoencoderKL()
    state = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    state |= {f"first_stage_model.{k}": v for k, v in vae.state_dict().items()}
    state |= {f"cond_stage_model.model.{k}": v for k, v in embedder.model.state_dict().items()}
    folder = tmp_path_factory.mktemp("genai-sd2")
    path = folder / "tiny-sd2.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path, embedder.eval(), tiny_tokenizer(folder / "tokenizer"), dict(TINY_SD2, context_dim=SD2_WIDTH)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_an_sd2_checkpoint_makes_sd_ovs_picture_in_genais_pipeline(sd2_checkpoint, tmp_path, prediction):
    """SD2's OpenCLIP tower, converted to transformers' class and traced at ldm's layer (the
    penultimate, layer-normed), tokens padded with 0: GenAI's picture (f32) >= 45 dB from sd-ov's with
    ldm's FrozenOpenCLIPEmbedder encoding the prompt; the webui's clip skip does not move it. A
    768-v model's folder (v_prediction, as the webui detects it) against k-diffusion's v sampler."""
    from sd_ov.runtime.vae import OVVae
    from sd_ov.serve import engine
    from sd_ov.tools.genai import export_genai
    from sd_ov.tools.genai_source import source_from_checkpoint

    path, embedder, tokenizer, config = sd2_checkpoint
    source = source_from_checkpoint(
        path, tmp_path / "cache", tokenizer, unet_config=config, clip_skip=1, prediction_type=prediction
    )
    assert source.clip_skip == 2 and source.tokenizer.pad_token == "!"
    out = export_genai(source, tmp_path / "genai-sd2")
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    scheduler = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == prediction

    prompt, seed, steps, cfg = "a lighthouse at dusk", 9, 4, 7.0
    made = genai_picture(out, prompt, seed, steps, cfg)

    def encode(text: str) -> torch.Tensor:
        ids = padded(tokenizer)(
            text, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        )
        with torch.no_grad():
            return embedder.encode_with_transformer(ids.input_ids)

    unet = engine.open_unet(source.unet_entry)
    noise = torch.randn(1, 4, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(seed))
    v = prediction == "v_prediction"
    latent = sample_euler(unet, noise, encode(prompt), encode(""), steps=steps, cfg_scale=cfg, v=v).latent
    decoded = OVVae(source.vae_entry).decode(latent / source.vae_scale)
    ours = ((decoded / 2 + 0.5).clamp(0, 1) * 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    db = metrics.psnr(made, ours)
    print(f"SD2 {prediction}: GenAI vs sd-ov {db:.1f} dB")
    assert db >= SAME_PICTURE_DB, db
    assert made.std() > 1, "a picture, not a flat colour"
