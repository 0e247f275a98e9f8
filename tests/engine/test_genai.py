"""A recipe exported for OpenVINO GenAI (`python -m sd_ov export-genai`): the real `openvino-genai`
package reads the folder and makes the picture sd-ov makes of the same recipe, prompt and noise.

Seeded random tiny SD1-architecture models (UNet, CLIP text model, VAE) in a single-file
checkpoint with the webui's keys, and a tiny CLIP BPE tokenizer (bytes as tokens): fidelity of
the exported folder, not picture quality. Skipped where openvino-genai is not installed
(`pip install -e .[genai]`; tools/run.sh installs it).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from sd_ov.errors import Cancelled
from sd_ov.optimize import metrics
from sd_ov.optimize.sampling import sample_euler

from ..conftest import TINY_SD1, TinyAutoencoderKL, TinyCLIPTextModel, tiny_tokenizer

genai = pytest.importorskip("openvino_genai", reason="openvino-genai is not installed")
pytest.importorskip("openvino_tokenizers", reason="openvino-tokenizers is not installed")

SIZE = 64  # pixels; the tiny VAE's factor is 2: a 32² latent
# GenAI at f32, as sd-ov's reference runs: on a CPU with AMX GenAI's default is bf16, which alone
# costs these tiny random models 5-30 dB; at f32 the pictures agree to 60+ dB, so a wrong
# conditioning, mask or layer shows
F32 = {"INFERENCE_PRECISION_HINT": "f32"}
SAME_PICTURE_DB = 45


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A single-file checkpoint (the webui's keys) of tiny SD1-architecture models, and them."""
    from safetensors.torch import save_file

    from sd_ov.graphs.ldm_unet import build_unet

    folder = tmp_path_factory.mktemp("genai")
    unet, vae, clip = (
        build_unet(TINY_SD1, seed=0),
        TinyAutoencoderKL(),
        TinyCLIPTextModel(TINY_SD1["context_dim"]),
    )
    state = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    state |= {f"first_stage_model.{k}": v for k, v in vae.state_dict().items()}
    state |= {f"cond_stage_model.transformer.{k}": v for k, v in clip.state_dict().items()}
    path = folder / "tiny-sd1.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path, clip, tiny_tokenizer(folder / "tokenizer")


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    """One cache for the module: the plain entries are exported once."""
    return tmp_path_factory.mktemp("genai-cache")


def encoded(source, text: str) -> torch.Tensor:
    """The prompt's hidden states as the source's text encoder gives them at its clip skip."""
    from sd_ov.tools.genai import PromptHidden

    ids = source.tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return PromptHidden(source.text_encoder, source.clip_skip)(ids.input_ids)


def picture(source, latent: torch.Tensor) -> np.ndarray:
    """The latent decoded by the source's OpenVINO VAE, as uint8 HWC."""
    from sd_ov.runtime.vae import OVVae

    decoded = OVVae(source.vae_entry, decoder_entry=source.vae_int8).decode(latent / source.vae_scale)
    pixels = ((decoded / 2 + 0.5).clamp(0, 1) * 255).to(torch.uint8)
    return pixels[0].permute(1, 2, 0).numpy()


def sd_ov_picture(source, prompt: str, seed: int, steps: int, cfg: float, lora=None) -> np.ndarray:
    """sd-ov's own picture of the source's recipe: the engine's Euler sampler (the webui's
    schedule) with the recipe's OpenVINO UNet, the prompt encoded by the same CLIP at the same
    clip skip, decoded by the recipe's OpenVINO VAE; GenAI's noise (torch's generator). `lora`:
    UNet LoRA layers served by the OpenVINO UNet's LoRA branch, as in a webui job."""
    from sd_ov.serve import engine

    latent_side = SIZE // 2
    noise = torch.randn(1, 4, latent_side, latent_side, generator=torch.Generator().manual_seed(seed))
    unet = engine.open_unet(source.unet_entry, lora=bool(lora))
    if lora:
        unet.set_lora(lora)
    cond, uncond = encoded(source, prompt), encoded(source, "")
    return picture(source, sample_euler(unet, noise, cond, uncond, steps=steps, cfg_scale=cfg).latent)


def genai_picture(
    folder: Path, prompt: str, seed: int, steps: int, cfg: float, negative_prompt: str | None = ""
) -> np.ndarray:
    """GenAI's Text2ImagePipeline at f32, SIZE², TorchGenerator(seed); `negative_prompt` None:
    none given (SDXL's pipeline then zeros the uncond half, as the webui does for an empty one)."""
    pipe = genai.Text2ImagePipeline(str(folder), "CPU", **F32)
    negative = {} if negative_prompt is None else {"negative_prompt": negative_prompt}
    image = pipe.generate(
        prompt,
        **negative,
        width=SIZE,
        height=SIZE,
        num_inference_steps=steps,
        guidance_scale=cfg,
        generator=genai.TorchGenerator(seed),
    )
    return np.asarray(image.data)[0]


def test_genai_makes_sd_ovs_picture_from_the_exported_folder(checkpoint, cache_root, tmp_path):
    """The plain FP32 recipe at clip skip 1 and 2: GenAI's Text2ImagePipeline with TorchGenerator,
    Euler, the same prompt, size and steps, >= 45 dB (f32) from sd-ov's own picture; the folder holds
    GenAI's layout and no torch weights."""
    from sd_ov.tools.genai import export_genai
    from sd_ov.tools.genai_source import source_from_checkpoint

    path, clip, tokenizer = checkpoint
    for skip in (1, 2):
        source = source_from_checkpoint(
            path, cache_root, tokenizer, unet_config=TINY_SD1, text_config=clip.config, clip_skip=skip
        )
        out = export_genai(source, tmp_path / f"genai-skip{skip}")
        parts = {p.parent.name for p in out.glob("*/openvino_model.xml")}
        assert parts == {"unet", "text_encoder", "vae_decoder", "vae_encoder"}
        assert (out / "tokenizer" / "openvino_tokenizer.xml").is_file()
        assert json.loads((out / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
        made = genai_picture(out, "a red fox in the snow", seed=42, steps=4, cfg=7.0)
        ours = sd_ov_picture(source, "a red fox in the snow", seed=42, steps=4, cfg=7.0)
        assert made.shape == ours.shape == (SIZE, SIZE, 3)
        db = metrics.psnr(made, ours)
        print(f"clip skip {skip}: GenAI vs sd-ov {db:.1f} dB")
        assert db >= SAME_PICTURE_DB, (skip, db)
        assert made.std() > 1, "a picture, not a flat colour"


def test_an_interrupted_export_leaves_nothing_and_a_second_replaces_the_first_whole(
    checkpoint, cache_root, tmp_path
):
    from sd_ov.tools.genai import export_genai
    from sd_ov.tools.genai_source import source_from_checkpoint

    path, clip, tokenizer = checkpoint
    source = source_from_checkpoint(
        path, cache_root, tokenizer, unet_config=TINY_SD1, text_config=clip.config
    )
    target = tmp_path / "out" / "genai"

    def cancel_at_the_text_encoder(message: str, fraction: float) -> None:
        if "text encoder" in message:
            raise Cancelled("Interrupt")

    with pytest.raises(Cancelled):
        export_genai(source, target, cancel_at_the_text_encoder)
    assert list((tmp_path / "out").iterdir()) == []
    export_genai(source, target)
    (target / "left-by-the-first.txt").write_text("x")
    with pytest.raises(Cancelled):
        export_genai(source, target, cancel_at_the_text_encoder)
    assert (target / "left-by-the-first.txt").is_file(), "a failed export leaves the folder there"
    export_genai(source, target)
    assert not (target / "left-by-the-first.txt").exists() and (target / "model_index.json").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["genai"]


def test_an_int8_tome_recipe_is_exported_as_optimize_made_it(checkpoint, cache_root, tmp_path):
    """A recipe Optimize made (INT8 weights + token merging 0.5): its own IR goes into the folder
    (INT8 weights, no FP32 copy: the UNet's file is a third of the FP32 one) with the INT8 VAE
    decoder Optimize made (the one the webui decodes it with), and GenAI's picture is
    >= 30 dB from sd-ov's of the same recipe and decoder (32 dB here: INT8 activations in the UNet
    and the decoder turn the two runtimes' 1e-5 differences into quantization steps, where the FP32
    recipe's pictures agree to 68 dB; the UNet alone, 40 dB)."""
    import openvino as ov

    from sd_ov.graphs.ldm_unet import load_unet_from_checkpoint
    from sd_ov.optimize.run import optimize
    from sd_ov.optimize.vae_int8 import quantize_vae_decoder
    from sd_ov.serve.engine import file_hash
    from sd_ov.store.recipe import Recipe
    from sd_ov.tools.genai import export_genai
    from sd_ov.tools.genai_source import source_from_checkpoint

    path, clip, tokenizer = checkpoint
    cache = cache_root
    recipe = Recipe(int8="weights", tome=0.5)
    unet = load_unet_from_checkpoint(path, TINY_SD1)
    optimize(unet, cache, path.stem, file_hash(path), recipe, measure=None)
    plain = source_from_checkpoint(path, cache, tokenizer, unet_config=TINY_SD1, text_config=clip.config)
    # Optimize's INT8 VAE decoder (the fastest preset's), calibrated on what decode is given
    gen = np.random.default_rng(0)
    latents = [(gen.normal(size=(1, 4, 32, 32)) / plain.vae_scale).astype(np.float32) for _ in range(4)]
    quantize_vae_decoder(plain.vae_entry, latents)
    source = source_from_checkpoint(
        path, cache, tokenizer, recipe_label=recipe.label(), unet_config=TINY_SD1, text_config=clip.config
    )
    out = export_genai(source, tmp_path / "genai-int8-tome")
    assert plain.vae_int8 is None and source.vae_int8 is not None  # the recipe decodes as the webui does
    assert json.loads((out / "model_index.json").read_text())["_sd_ov"]["vae"] == "INT8 decoder"
    core, f32 = ov.Core(), {"INFERENCE_PRECISION_HINT": "f32"}
    exported = core.compile_model(str(out / "vae_decoder" / "openvino_model.xml"), "CPU", f32)
    made_by_optimize = core.compile_model(str(source.vae_int8.ir_path("decoder")), "CPU", f32)
    graph = core.read_model(str(out / "vae_decoder" / "openvino_model.xml"))
    assert any(op.get_type_name() == "FakeQuantize" for op in graph.get_ops()), "an INT8 graph"
    same = exported({0: latents[0]})[0], made_by_optimize({0: latents[0]})[0]
    assert np.array_equal(*same), "the folder's decoder is Optimize's INT8 one"
    int8_bytes = (out / "unet" / "openvino_model.bin").stat().st_size
    fp32_bytes = sum(p.stat().st_size for p in plain.unet_entry.path.glob("*.bin"))
    assert int8_bytes < 0.4 * fp32_bytes, (int8_bytes, fp32_bytes)
    made = genai_picture(out, "a lighthouse at dusk", seed=7, steps=4, cfg=7.0)
    ours = sd_ov_picture(source, "a lighthouse at dusk", seed=7, steps=4, cfg=7.0)
    db = metrics.psnr(made, ours)
    print(f"INT8 ToMe0.5: GenAI vs sd-ov {db:.1f} dB")
    assert db >= 30, db


def test_image_to_image_from_the_folder_makes_sd_ovs_picture(checkpoint, cache_root, tmp_path):
    """GenAI's Image2ImagePipeline on the folder (the VAE encoder's posterior, sampled by GenAI):
    >= 45 dB (f32) from sd-ov's img2img of the same picture, strength and noise (the posterior's draw
    first, then the noise, as GenAI draws them from its generator)."""
    import openvino as ov

    from sd_ov.optimize.sampling import Denoiser
    from sd_ov.runtime.vae import OVVae
    from sd_ov.serve import engine
    from sd_ov.tools.genai import PromptHidden, export_genai
    from sd_ov.tools.genai_source import source_from_checkpoint

    path, clip, tokenizer = checkpoint
    source = source_from_checkpoint(
        path, cache_root, tokenizer, unet_config=TINY_SD1, text_config=clip.config
    )
    out = export_genai(source, tmp_path / "genai")
    gen = np.random.default_rng(3)
    picture = np.zeros((1, SIZE, SIZE, 3), np.uint8)
    picture[:, 16:48, 8:56] = gen.integers(0, 255, (1, 32, 48, 3), dtype=np.uint8)
    steps, strength, seed, cfg = 10, 0.6, 11, 7.0
    pipe = genai.Image2ImagePipeline(str(out), "CPU", **F32)
    made = pipe.generate(
        "a house",
        image=ov.Tensor(picture),
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=cfg,
        generator=genai.TorchGenerator(seed),
    )
    made = np.asarray(made.data)[0]

    torch_gen = torch.Generator().manual_seed(seed)
    vae = OVVae(source.vae_entry)
    image = torch.from_numpy(picture).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    moments = vae.encode(image)
    mean, logvar = moments.chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    latent = (mean + std * torch.randn(mean.shape, generator=torch_gen)) * source.vae_scale
    noise = torch.randn(latent.shape, generator=torch_gen)

    def encode(text: str) -> torch.Tensor:
        ids = source.tokenizer(
            text, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        )
        with torch.no_grad():
            return PromptHidden(source.text_encoder, source.clip_skip)(ids.input_ids)

    denoiser = Denoiser(engine.open_unet(source.unet_entry), cfg)
    sigmas = denoiser.schedule(steps)
    start = steps - int(steps * strength)
    x = latent + noise * sigmas[start]
    cond, uncond = encode("a house"), encode("")
    with torch.no_grad():
        for i in range(start, steps):
            denoised = denoiser(x, float(sigmas[i]), cond, uncond)
            x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    decoded = vae.decode(x / source.vae_scale)
    ours = ((decoded / 2 + 0.5).clamp(0, 1) * 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    db = metrics.psnr(made, ours)
    print(f"Image2Image: GenAI vs sd-ov {db:.1f} dB")
    assert db >= SAME_PICTURE_DB, db


def test_an_inpainting_checkpoint_is_genais_inpainting_folder(checkpoint, tmp_path):
    """A 9-channel SD1 UNet (latent, mask, the masked picture's latent: ldm's c_concat) exported as
    StableDiffusionInpaintPipeline: GenAI's InpaintingPipeline at strength 1 makes sd-ov's
    inpainting picture (the noise first, then the masked picture's posterior draw, as GenAI draws
    them) to >= 45 dB (f32)."""
    import openvino as ov
    from safetensors.torch import load_file, save_file

    from sd_ov.graphs.ldm_unet import build_unet
    from sd_ov.runtime.vae import OVVae
    from sd_ov.serve import engine
    from sd_ov.tools.genai import PromptHidden, export_genai
    from sd_ov.tools.genai_source import source_from_checkpoint

    path, clip, tokenizer = checkpoint
    config = dict(TINY_SD1, in_channels=9)
    state = {k: v for k, v in load_file(str(path)).items() if not k.startswith("model.diffusion_model.")}
    state |= {f"model.diffusion_model.{k}": v for k, v in build_unet(config, seed=1).state_dict().items()}
    inpaint_path = tmp_path / "tiny-sd1-inpainting.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, inpaint_path)
    source = source_from_checkpoint(
        inpaint_path, tmp_path / "cache", tokenizer, unet_config=config, text_config=clip.config
    )
    out = export_genai(source, tmp_path / "genai-inpaint")
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionInpaintPipeline"

    picture = np.random.default_rng(4).integers(0, 255, (1, SIZE, SIZE, 3), dtype=np.uint8)
    mask = np.zeros((1, SIZE, SIZE, 1), np.uint8)
    mask[:, 16:48, 32:] = 255  # on the latent grid: every resize of it agrees
    prompt, steps, seed, cfg = "a window", 4, 21, 7.0
    made = genai.InpaintingPipeline(str(out), "CPU", **F32).generate(
        prompt,
        image=ov.Tensor(picture),
        mask_image=ov.Tensor(mask),
        width=SIZE,
        height=SIZE,
        strength=1.0,
        num_inference_steps=steps,
        guidance_scale=cfg,
        generator=genai.TorchGenerator(seed),
    )
    made = np.asarray(made.data)[0]

    gen = torch.Generator().manual_seed(seed)
    side = SIZE // 2
    noise = torch.randn(1, 4, side, side, generator=gen)
    vae = OVVae(source.vae_entry)
    image = torch.from_numpy(picture).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    full_mask = torch.from_numpy(mask).permute(0, 3, 1, 2).float() / 255
    mean, logvar = vae.encode(image * (full_mask < 0.5)).chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    masked_latent = (mean + std * torch.randn(mean.shape, generator=gen)) * source.vae_scale
    c_concat = torch.cat([full_mask[:, :, ::2, ::2], masked_latent], dim=1).repeat(2, 1, 1, 1)
    unet = engine.open_unet(source.unet_entry)

    def encode(text: str) -> torch.Tensor:
        ids = tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        with torch.no_grad():
            return PromptHidden(source.text_encoder, 1)(ids.input_ids)

    latent = sample_euler(
        lambda x, t, c: unet(torch.cat([x, c_concat], dim=1), t, c),
        noise,
        encode(prompt),
        encode(""),
        steps=steps,
        cfg_scale=cfg,
    ).latent
    decoded = vae.decode(latent / source.vae_scale)
    ours = ((decoded / 2 + 0.5).clamp(0, 1) * 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    db = metrics.psnr(made, ours)
    print(f"Inpainting: GenAI vs sd-ov {db:.1f} dB")
    assert db >= SAME_PICTURE_DB, db


def test_a_lora_is_baked_into_the_folder_at_its_weight(checkpoint, cache_root, tmp_path):
    """A LoRA on the UNet (attention Linears, a 1x1 and a 3x3 convolution) and on the text
    encoder, baked into the folder: GenAI's picture >= 45 dB (f32) from sd-ov's with the same
    LoRA served by its OpenVINO LoRA branch and the text encoder's merged weights, and far from
    the picture without it; the UNet's file grows by the branches only, and the index names it."""
    from sd_ov.graphs.ldm_unet import build_unet
    from sd_ov.graphs.lora_branch import LoraLayer
    from sd_ov.tools.genai import export_genai
    from sd_ov.tools.genai_lora import BakedLora, merged
    from sd_ov.tools.genai_source import source_from_checkpoint

    path, clip, tokenizer = checkpoint
    plain = source_from_checkpoint(path, cache_root, tokenizer, unet_config=TINY_SD1, text_config=clip.config)
    torch_unet = build_unet(TINY_SD1, seed=0)
    gen = np.random.default_rng(8)

    def low_rank(module: torch.nn.Module, rank: int = 4) -> LoraLayer:
        w = module.weight
        fan_in = w[0].numel()
        down = gen.normal(0, 1 / fan_in**0.5, (rank, fan_in)).astype(np.float32)
        up = gen.normal(0, 0.5 / rank**0.5, (w.shape[0], rank)).astype(np.float32)
        return LoraLayer(down, up)  # a conv's down flattened: [rank, in * kh * kw]

    modules = dict(torch_unet.named_modules())
    picked = [n for n, m in modules.items() if n.endswith(("attn2.to_k", "attn1.to_q", "proj_in"))]
    picked += [n for n, m in modules.items() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)][
        :2
    ]
    unet_layers = {name: low_rank(modules[name]) for name in picked}
    te_layers = {
        "text_model.encoder.layers.1.self_attn.q_proj": low_rank(
            clip.text_model.encoder.layers[1].self_attn.q_proj
        )
    }
    source = replace(plain, lora=BakedLora(unet_layers, te_layers, ["tiny-lora:0.8"]))
    out = export_genai(source, tmp_path / "genai-lora")
    assert json.loads((out / "model_index.json").read_text())["_sd_ov"]["loras"] == ["tiny-lora:0.8"]
    base_bytes = sum(p.stat().st_size for p in plain.unet_entry.path.glob("*.bin"))
    assert (out / "unet" / "openvino_model.bin").stat().st_size < base_bytes * 1.1

    prompt, seed, steps, cfg = "a red fox in the snow", 3, 4, 7.0
    made = genai_picture(out, prompt, seed=seed, steps=steps, cfg=cfg)
    served = replace(plain, text_encoder=merged(plain.text_encoder, te_layers))
    ours = sd_ov_picture(served, prompt, seed=seed, steps=steps, cfg=cfg, lora=unet_layers)
    without = sd_ov_picture(plain, prompt, seed=seed, steps=steps, cfg=cfg)
    db, apart = metrics.psnr(made, ours), metrics.psnr(made, without)
    print(f"LoRA baked: GenAI vs sd-ov {db:.1f} dB (vs no LoRA {apart:.1f} dB)")
    assert db >= SAME_PICTURE_DB and apart < 30, (db, apart)


@pytest.mark.parametrize("sampler", ["Euler a", "DDIM"])
def test_the_scheduler_reproduces_the_webuis_sampler(checkpoint, cache_root, tmp_path, sampler):
    """GenAI's EulerAncestralDiscreteScheduler / DDIMScheduler as written for the webui's Euler a
    (k-diffusion's: the step's noise drawn from the generator after the first noise, as the
    webui's CPU RNG draws it) and DDIM (A1111's: timesteps 1, k+1, ..., eta 0): >= 45 dB (f32)
    from those samplers run here on the same UNet."""
    from sd_ov.optimize.sampling import Denoiser
    from sd_ov.serve import engine
    from sd_ov.tools.genai import export_genai
    from sd_ov.tools.genai_source import source_from_checkpoint

    path, clip, tokenizer = checkpoint
    source = source_from_checkpoint(
        path, cache_root, tokenizer, unet_config=TINY_SD1, text_config=clip.config
    )
    source.sampler = sampler
    out = export_genai(source, tmp_path / "genai")
    prompt, seed, steps, cfg = "a quiet harbour", 5, 4, 7.0
    made = genai_picture(out, prompt, seed=seed, steps=steps, cfg=cfg)

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, SIZE // 2, SIZE // 2, generator=gen)
    unet = engine.open_unet(source.unet_entry)
    denoiser = Denoiser(unet, cfg)
    cond, uncond = (encoded(source, text) for text in (prompt, ""))
    with torch.no_grad():
        if sampler == "Euler a":
            sigmas = denoiser.schedule(steps)
            x = x * sigmas[0]
            for i in range(steps):
                sigma, after = float(sigmas[i]), float(sigmas[i + 1])
                d = (x - denoiser(x, sigma, cond, uncond)) / sigma
                up = (after**2 * (sigma**2 - after**2) / sigma**2) ** 0.5
                down = (after**2 - up**2) ** 0.5
                x = x + d * (down - sigma) + torch.randn(x.shape, generator=gen) * up
        else:
            # A1111's ddim (sd_samplers_timesteps_impl): timesteps 1, k+1, ...; each step to the
            # one below, so steps - 1 UNet calls ending at t=1 (GenAI takes one more, t=1 to 0)
            alphas = 1 / (denoiser.train_sigmas**2 + 1)
            timesteps = [i * (1000 // steps) + 1 for i in range(steps)]
            for index in range(steps - 1, 0, -1):
                t, t_prev = timesteps[index], timesteps[index - 1]
                eps = unet(torch.cat([x, x]), torch.full((2,), float(t)), torch.cat([cond, uncond]))
                eps = eps[1:] + cfg * (eps[:1] - eps[1:])
                a, a_prev = alphas[t], alphas[t_prev]
                x0 = (x - (1 - a) ** 0.5 * eps) / a**0.5
                x = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
    ours = picture(source, x)
    db = metrics.psnr(made, ours)
    print(f"{sampler}: GenAI vs sd-ov {db:.1f} dB")
    assert db >= SAME_PICTURE_DB, db


def test_the_command_line_says_what_it_cannot_export(checkpoint, cache_root, tmp_path, capsys):
    """`python -m sd_ov export-genai` on what it can't export: a missing file, and a checkpoint
    whose CLIP is not SD1.x's CLIP ViT-L/14 (the tiny test model's): one clear line, exit 2,
    nothing written. (Its successful export: the real A1111 test, tests/real, `-k genai`.)"""
    from sd_ov.tools.cli import main

    path, clip, tokenizer = checkpoint
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_SD1))
    tokenizer.save_pretrained(str(tmp_path / "tokenizer"))
    args = [
        "export-genai",
        "--cache",
        str(cache_root),
        "--config",
        str(config),
        "--out",
        str(tmp_path / "out"),
    ]
    args += ["--tokenizer", str(tmp_path / "tokenizer"), "--sampler", "DPM++ 2M"]
    assert main([*args, "--checkpoint", str(tmp_path / "missing.safetensors")]) == 2
    assert "no checkpoint file at" in capsys.readouterr().err
    assert main([*args, "--checkpoint", str(path)]) == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert "is not the expected one (49408 x 768: SD1.x's CLIP ViT-L/14)" in said[-1], said
    assert not (tmp_path / "out").exists() and not any("UNet" in line for line in said), (
        said
    )  # before the export


def test_a_sampler_genai_has_no_scheduler_for_writes_euler_and_says_so():
    from sd_ov.tools.genai_scheduler import scheduler_config

    config, note = scheduler_config("DPM++ 2M")
    assert config["_class_name"] == "EulerDiscreteScheduler" and note.startswith(
        "DPM++ 2M has no OpenVINO GenAI"
    )
    config, note = scheduler_config("DDIM", "v_prediction")
    assert (config["_class_name"], config["prediction_type"], note) == ("DDIMScheduler", "v_prediction", None)
