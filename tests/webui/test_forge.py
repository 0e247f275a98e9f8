"""sd-ov in stable-diffusion-webui-forge, against stand-ins of Forge's own pieces (forge_stub/: its
UnetPatcher, KModel, ForgeObjects and memory manager, with their real paths and signatures) and
A1111's `modules.*` API, which Forge keeps (stub/).

A job runs in Forge's order (`processing.process_images_inner` of dfdcbab6): the scripts' `process`
hook, the SD Unet applied, then per batch the model's objects reset, LoRAs applied to a clone,
`process_batch`, the objects after LoRA, `process_before_every_sampling`, the patcher loaded by the
memory manager, and the sampler calling `KModel.apply_model`. No A1111 hijack routes UNet calls:
what OpenVINO serves comes through the object patched into the pass's UNet patcher.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sd_ov.optimize import metrics
from sd_ov.optimize.sampling import sample_euler

from ..conftest import TINY_SD1
from .harness import infotext_params
from .test_lora import LAYERS

FORGE_STUB = Path(__file__).parent / "forge_stub"
FORGE_MODULES = ("modules_forge", "backend")
SERVED = "fp32, CPU, f32, dynamic"
MATCH = 1e-3


@pytest.fixture
def forge(webui, monkeypatch):
    """The stand-in webui as Forge: its model object, patchers and memory manager; the loaded
    checkpoint's UNet as Forge's torch UNet, no A1111 hijack of `UNetModel.forward`."""
    from modules import sd_hijack_unet, sd_unet

    monkeypatch.syspath_prepend(str(FORGE_STUB))
    from backend.diffusion_engine.base import ForgeDiffusionEngine, ForgeObjects
    from backend.modules.k_model import KModel
    from backend.patcher.unet import UnetPatcher
    from forge_sd_unet import apply_unet

    import sd_ov_webui.forge as forge_module
    import sd_ov_webui.host as host

    monkeypatch.setattr(host, "is_forge", lambda: True)
    monkeypatch.setattr(sd_unet, "apply_unet", apply_unet)
    # the tiny test UNet is no shipped SD1/SD2 config: its own (the real lookup: test_ldm's)
    monkeypatch.setattr(
        forge_module,
        "config_for_state_dict",
        lambda state: dict(TINY_SD1, in_channels=int(state["input_blocks.0.0.weight"].shape[1])),
    )
    sd_hijack_unet.undo()
    unet = webui.shared.sd_model.model.diffusion_model
    with torch.inference_mode():  # Forge loads its models under inference mode: inference tensors
        for module in unet.modules():
            for name, param in list(module._parameters.items()):
                if param is not None:
                    module._parameters[name] = torch.nn.Parameter(param.detach().clone(), requires_grad=False)
    from backend.nn.unet import IntegratedUNet2DConditionModel

    ldm_class, unet.__class__ = unet.__class__, IntegratedUNet2DConditionModel  # Forge's forward
    objects = ForgeObjects(UnetPatcher(KModel(unet)), clip=None, vae=None, clipvision=None)
    webui.shared.sd_model = ForgeDiffusionEngine(objects, webui.info)
    yield SimpleNamespace(webui=webui, unet=unet, kmodel=objects.unet.model)
    unet.__class__ = ldm_class
    sd_hijack_unet.hijack()
    for name in [m for m in sys.modules if m.split(".")[0] in (*FORGE_MODULES, "forge_sd_unet")]:
        sys.modules.pop(name)


def forge_job(
    forge,
    sd_unet="Automatic",
    lora=None,
    inside_patch=False,
    hires=False,
    steps=4,
    seed=3,
    reload=None,
    units=(),
    deepcache=0,
    concat=None,
):
    """One txt2img job in Forge's order; the picture's latent and its infotext's parameters.
    `lora`: (file name, strength, {weight key: patch}) as Forge's Lora extension adds them;
    `reload()`: Forge's `forge_model_reload` loading another checkpoint inside the job; `units`:
    ControlNet units, added to each pass's patcher as Forge's ControlNet does (in its own
    `process_before_every_sampling`, which runs before an extension's); `deepcache`: the
    accordion's DeepCache interval; `concat`: an inpainting job's mask and masked latent (KModel's
    `c_concat`)."""
    from backend import memory_management
    from modules import processing, scripts, shared
    from modules import sd_unet as sd_unet_module

    webui = forge.webui
    shared.opts.sd_unet = sd_unet
    gen = torch.Generator().manual_seed(99)
    cond, uncond = (torch.randn(1, 77, TINY_SD1["context_dim"], generator=gen) for _ in range(2))
    runner = scripts.ScriptRunner([(webui.script, [True, deepcache, 0, "uniform"])])
    p = processing.StableDiffusionProcessing(
        shared.sd_model, cond, uncond, steps=steps, seed=seed, scripts=runner, script_args=runner.script_args
    )
    model = p.sd_model
    runner.before_process(p)
    runner.process(p)
    sd_unet_module.apply_unet()
    if reload is not None:  # inside the batch loop, before anything of the batch
        p.sd_model = model = reload()
    passes = [steps, steps] if hires else [steps]
    model.forge_objects = model.forge_objects_original.shallow_copy()
    if lora:  # Forge's Lora extension: patches on a clone of the UNet's patcher
        filename, strength, patches = lora
        clone = model.forge_objects.unet.clone()
        clone.add_patches(filename=filename, patches=patches, strength_patch=strength)
        found = sum(len(entries) for entries in clone.lora_patches[(filename, strength, 1.0, False)].values())
        assert found == len(patches), "Forge found the UNet's weights for every LoRA key"
        model.forge_objects.unet = clone
    model.forge_objects_after_applying_lora = model.forge_objects.shallow_copy()
    runner.process_batch(p, batch_number=0)
    engine = getattr(model, "text_processing_engine", None)
    if engine is not None:  # p.setup_conds: Forge's engine encodes the prompts (fixed tokens here)
        forge.tokens = torch.randint(0, 1000, (2, 77), generator=torch.Generator().manual_seed(5))
        forge.encoded = engine.encode_with_transformers(forge.tokens)
    latent = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(seed))
    for n, pass_steps in enumerate(passes):
        if n:
            runner.before_hr(p)
        model.forge_objects = model.forge_objects_after_applying_lora.shallow_copy()
        if inside_patch:  # e.g. FreeU: a patch inside the UNet, on this pass's patcher
            patched = model.forge_objects.unet.clone()
            patched.set_model_patch(lambda h, *a: h, "output_block_patch")
            model.forge_objects.unet = patched
        if units:
            controlled = model.forge_objects.unet.clone()
            for unit in units:
                controlled.add_patched_controlnet(unit)
            model.forge_objects.unet = controlled
        runner.process_before_every_sampling(p, x=latent, noise=latent, c=cond, uc=uncond)
        patcher = model.forge_objects.unet
        memory_management.load_models_gpu([patcher])
        transformer_options = patcher.model_options["transformer_options"]

        def denoise(x, t, c, patcher=patcher, options=transformer_options):
            units = patcher.controlnet_linked_list  # sampling_function: c["control"] per call
            extra = {} if concat is None else {"c_concat": concat.expand(x.shape[0], -1, -1, -1)}
            if units is None:
                return patcher.model.apply_model(x, t, c_crossattn=c, transformer_options=options, **extra)
            control = units.get_control(x, t, {"c_crossattn": c}, 1)
            return patcher.model.apply_model(
                x, t, c_crossattn=c, control=control, control_model=units, transformer_options=options
            )

        latent = sample_euler(denoise, latent, cond, uncond, steps=pass_steps, cfg_scale=7.0).latent
    runner.post_sample(p, scripts.PostSampleArgs(latent))
    if model.forge_objects.vae is not None:  # processing.decode_latent_batch
        forge.decoded = model.decode_first_stage(latent)
    runner.postprocess_batch(p, latent, batch_number=0)
    info = processing.create_infotext(p)
    runner.postprocess(p, SimpleNamespace(images=[], infotexts=[info]))
    return latent, infotext_params(info)


def test_forge_serves_its_unet_on_openvino_and_a_torch_job_after_it_is_torchs(forge):
    torch_latent, torch_info = forge_job(forge, "None")
    latent, info = forge_job(forge)
    again, again_info = forge_job(forge)
    torch_again, _ = forge_job(forge, "None")
    assert torch_info["OpenVINO"] == "off (SD Unet is None)"
    assert info["OpenVINO"] == SERVED and again_info["OpenVINO"] == SERVED, info
    assert "text encoders: Forge's own" in info["OpenVINO note"]
    assert metrics.rel_l2(latent, torch_latent) <= MATCH and metrics.rel_l2(again, torch_latent) <= MATCH
    assert metrics.rel_l2(latent, torch_latent) > 0, "the calls went to OpenVINO, not to torch"
    assert torch.equal(torch_again, torch_latent), "Forge unpatched the OpenVINO UNet for the torch job"
    assert forge.kmodel.diffusion_model is forge.unet


def test_hires_fix_in_forge_serves_both_passes(forge):
    torch_latent, _ = forge_job(forge, "None", hires=True)
    latent, info = forge_job(forge, hires=True)
    assert info["OpenVINO"] == SERVED and metrics.rel_l2(latent, torch_latent) <= MATCH
    assert forge.webui.sd_unet.current_unet.record.openvino_calls == 4 * 2  # the hires pass's calls


def forge_lora_patches(forge, seed: int, mid: bool = False) -> dict:
    """Forge's LoRA patches for a few layers (`("lora", (up, down, alpha, mid, dora_scale))` per
    weight key, as its loader makes them from a kohya file): attention and feed-forward Linears,
    a 1x1 proj_in, ResBlock 3x3 convs (with `mid`: LoCon's CP decomposition)."""
    gen = torch.Generator().manual_seed(seed)
    modules = dict(forge.unet.named_modules())
    patches, rank = {}, 4
    for path in LAYERS:
        weight = modules[path].weight.detach()
        out_f, in_f = weight.shape[0], weight[0].numel()
        up = torch.randn(out_f, rank, generator=gen) * weight.abs().mean() * 8
        down = torch.randn(rank, in_f, generator=gen) / in_f**0.5
        mid_w = None
        if weight.dim() == 4:
            up, down = up.reshape(out_f, rank, 1, 1), down.reshape(rank, *weight.shape[1:])
            if mid and weight.shape[2:] != (1, 1):
                down = torch.randn(rank, weight.shape[1], 1, 1, generator=gen) / weight.shape[1] ** 0.5
                mid_w = torch.randn(rank, rank, *weight.shape[2:], generator=gen) / 3
        patches[f"diffusion_model.{path}.weight"] = ("lora", (up, down, torch.tensor(rank / 2), mid_w, None))
    return patches


@contextlib.contextmanager
def merged_as_forge_merges(forge, strength: float, patches: dict):
    """What Forge's LoraLoader does to the torch weights: weight += strength * alpha / rank * up @ down
    (a CP mid rebuilt into the down, as its loader does)."""
    modules = dict(forge.unet.named_modules())
    saved = {}
    with torch.inference_mode():  # Forge's loader merges under inference mode
        for key, (_, (up, down, alpha, mid, _)) in patches.items():
            layer = modules[key[len("diffusion_model.") : -len(".weight")]]
            saved[layer] = layer.weight.detach().clone()
            rank = down.shape[0]
            if mid is not None:  # backend/patcher/lora.py's rebuild of the CP decomposition
                shape = [down.shape[1], down.shape[0], mid.shape[2], mid.shape[3]]
                down = torch.mm(down.transpose(0, 1).flatten(1), mid.transpose(0, 1).flatten(1))
                down = down.reshape(shape).transpose(0, 1)
            diff = torch.mm(up.flatten(1), down.flatten(1)).reshape(layer.weight.shape)
            layer.weight += strength * float(alpha) / rank * diff
    try:
        yield
    finally:
        with torch.inference_mode():
            for layer, weight in saved.items():
                layer.weight.copy_(weight)


def test_a_forge_lora_is_served_through_the_branch_like_forges_merged_torch(forge):
    """Forge's LoRA patches reach the OpenVINO UNet's LoRA branch: the picture matches torch with
    the LoRA merged as Forge's loader merges it; another strength recompiles nothing; none again
    is the plain picture."""
    ink = forge_lora_patches(forge, seed=2, mid=True)
    base, _ = forge_job(forge, "None")
    with merged_as_forge_merges(forge, 0.8, ink):
        torch_lora, _ = forge_job(forge, "None")
    with merged_as_forge_merges(forge, 0.4, ink):
        torch_weaker, _ = forge_job(forge, "None")
    assert metrics.rel_l2(torch_lora, base) > 0.05, "the LoRA must matter"
    latent, info = forge_job(forge, lora=("/models/Lora/ink.safetensors", 0.8, ink))
    assert info["OpenVINO"] == SERVED and info["OpenVINO LoRA"] == "ink:0.8", info
    assert metrics.rel_l2(latent, torch_lora) <= MATCH
    served = forge.webui.sd_unet.current_unet.served
    compiles = dict(served.plain.stats.compiles)
    weaker, weaker_info = forge_job(forge, lora=("/models/Lora/ink.safetensors", 0.4, ink))
    assert weaker_info["OpenVINO LoRA"] == "ink:0.4"
    assert metrics.rel_l2(weaker, torch_weaker) <= MATCH
    plain, plain_info = forge_job(forge)
    assert "OpenVINO LoRA" not in plain_info and metrics.rel_l2(plain, base) <= MATCH
    assert served.plain.stats.compiles == compiles, "a strength or set change recompiles nothing"


def test_a_forge_lora_of_another_kind_makes_the_job_torchs_with_its_reason(forge):
    """A LoKr (or a full diff) is not a low-rank update: the job is torch's, never a picture without
    the LoRA; the next job without it is served."""
    torch_latent, _ = forge_job(forge, "None")
    path = LAYERS[0]
    weight = dict(forge.unet.named_modules())[path].weight
    lokr = {f"diffusion_model.{path}.weight": ("lokr", (None,) * 9)}
    latent, info = forge_job(forge, lora=("/models/Lora/weave.safetensors", 1.0, lokr))
    said = info["OpenVINO"]
    assert said == f"off (LoRA weave:1: LoKr layers are not served on OpenVINO yet ({path}))", said
    assert torch.equal(latent, torch_latent)  # the stand-in's torch applies no patch: torch made it
    diff = {f"diffusion_model.{path}.weight": (torch.zeros_like(weight),)}
    _, diff_info = forge_job(forge, lora=("/models/Lora/flat.safetensors", 1.0, diff))
    assert diff_info["OpenVINO"].startswith("off (LoRA flat:1: full-weight diff layers"), diff_info
    _, next_info = forge_job(forge)
    assert next_info["OpenVINO"] == SERVED


def test_a_patch_another_extension_puts_inside_the_unet_goes_to_torch(forge):
    """FreeU, SAG, Kohya's HRFix & co patch inside Forge's UNet (`transformer_options`): the
    compiled UNet can't follow them, so the job is torch's, with the reason."""
    torch_latent, _ = forge_job(forge, "None", inside_patch=True)
    latent, info = forge_job(forge, inside_patch=True)
    assert info["OpenVINO"] == "off (another extension patched the UNet (patches))", info
    assert torch.equal(latent, torch_latent)


def test_a_model_forge_serves_only_on_torch_says_why(forge, monkeypatch, tmp_path):
    """A UNet sd-ov does not export (an SDXL refiner): refused at activation with the reason,
    before anything is written."""
    import sd_ov_webui.forge as forge_module
    from sd_ov import UnsupportedModelError

    def refiner(state):
        raise UnsupportedModelError("this UNet is not supported: SDXL refiner")

    monkeypatch.setattr(forge_module, "config_for_state_dict", refiner)
    _, info = forge_job(forge)
    assert info["OpenVINO"].startswith(
        "off (this model is not served on OpenVINO in Forge yet (SD1.x, SD2.x and SDXL base are): "
        "this UNet is not supported: SDXL refiner"
    ), info


@pytest.mark.skipif(importlib.util.find_spec("sgm") is not None, reason="sgm is importable here")
def test_sdxl_in_forge_without_sgm_says_how_to_get_it(forge, monkeypatch, tmp_path):
    """SDXL where Stability's generative-models (sgm) did not arrive (no folder in the webui's
    repositories/): torch, with what to do."""
    import sd_ov_webui.forge as forge_module
    from sd_ov.graphs.ldm_unet import load_config

    monkeypatch.setattr(forge_module, "config_for_state_dict", lambda state: load_config("sdxl"))
    monkeypatch.setattr(forge_module.paths, "script_path", str(tmp_path))
    torch_latent, _ = forge_job(forge, "None")
    latent, info = forge_job(forge)
    assert torch.equal(latent, torch_latent)
    assert "SDXL's UNet class (sgm) is missing: sd-ov's installer puts" in info["OpenVINO"], info


def test_optimize_in_forge_makes_a_recipe_that_serves_there(forge, tmp_path):
    """Optimize in Forge: from ldm's class loaded with the checkpoint file's weights (Forge's UNet
    class is its own), its calibration pictures and sample picture made by Forge's sampler through
    its KModel. The API makes an INT8 hybrid recipe with its report (the sample picture against
    torch's), says why no INT8 VAE decoder was made, and a Forge job on the new option is served
    near torch's picture; Forge's own UNet is whole again and its own after Optimize."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from sd_ov.runtime.torch_weights import is_released

    forge.webui.shared.opts.sd_ov_cache_dir = str(tmp_path / "cache")  # its recipe stays its own
    torch_latent, _ = forge_job(forge, "None")
    app = FastAPI()
    forge.webui.callbacks.app_started_callback(None, app)
    form = {"int8": "hybrid", "samples": 2, "calib_steps": 2, "prompts_text": "an apple\na car"}
    form |= {"calib_size": "128x128", "measure_size": "128x128", "sizes_text": "", "deepcache_branch": "off"}
    answer = TestClient(app).post(
        "/sd-ov/v1/optimize", json={**form, "compare_picture": True, "vae_int8": True}
    )
    assert answer.status_code == 200, answer.json()
    made = answer.json()
    assert made["label"] == "[OpenVINO INT8] tinyckpt" and 10 < made["report"]["psnr_db"] < 100, made[
        "report"
    ]
    no_decoder = "not made in Forge yet: its VAE decodes on OpenVINO at float precision"
    assert made["vae_decoder"] == {"note": no_decoder}
    assert forge.kmodel.diffusion_model is forge.unet and not is_released(forge.unet)
    latent, info = forge_job(forge, "[OpenVINO INT8] tinyckpt")
    assert info["OpenVINO"] == "int8, CPU, f32, dynamic", info
    assert 0 < metrics.rel_l2(latent, torch_latent) < 0.3


def test_a_checkpoint_loaded_inside_a_forge_job_is_served_with_its_own_unet(forge, tmp_path):
    """Forge loads a changed checkpoint inside the job (`forge_model_reload`, after the SD Unet was
    applied) and calls the model-loaded callbacks: the OpenVINO UNet of the old checkpoint must not
    serve the new one; its own serves (matching its torch picture)."""
    from backend.diffusion_engine.base import ForgeDiffusionEngine, ForgeObjects
    from backend.modules.k_model import KModel
    from backend.patcher.unet import UnetPatcher
    from modules import shared

    from sd_ov.graphs.ldm_unet import build_unet

    from .harness import checkpoint

    forge_job(forge)  # served with the first checkpoint
    other_unet = build_unet(TINY_SD1, seed=7)
    other_info = checkpoint(tmp_path, "otherckpt", other_unet)

    def reload():
        objects = ForgeObjects(UnetPatcher(KModel(other_unet)), clip=None, vae=None, clipvision=None)
        shared.sd_model = ForgeDiffusionEngine(objects, other_info)
        forge.webui.callbacks.model_loaded_callback(shared.sd_model)
        return shared.sd_model

    latent, info = forge_job(forge, reload=reload)
    forge.unet = other_unet
    torch_latent, _ = forge_job(forge, "None")
    assert info["OpenVINO"] == SERVED
    assert metrics.rel_l2(latent, torch_latent) <= MATCH, "the new checkpoint's own UNet served"


def test_forges_torch_unet_weights_are_freed_while_openvino_serves(forge):
    """In Forge too the torch UNet's weights leave memory while OpenVINO serves, checked against the
    checkpoint first; a torch job (SD Unet None) reads them back bit-exactly before Forge loads its
    UNet; a job torch makes within the option (a LoKr) has them, and they go again after it."""
    from sd_ov.runtime.torch_weights import is_released

    torch_latent, _ = forge_job(forge, "None")
    _, info = forge_job(forge)
    assert info["OpenVINO"] == SERVED and is_released(forge.unet)
    again, _ = forge_job(forge, "None")
    assert not is_released(forge.unet) and torch.equal(again, torch_latent)
    forge_job(forge)
    assert is_released(forge.unet)
    lokr = {f"diffusion_model.{LAYERS[0]}.weight": ("lokr", (None,) * 9)}
    latent, lokr_info = forge_job(forge, lora=("/models/Lora/weave.safetensors", 1.0, lokr))
    assert lokr_info["OpenVINO"].startswith("off (LoRA weave:1: LoKr")
    assert torch.equal(latent, torch_latent), "torch made it with the checkpoint's weights"
    assert is_released(forge.unet), "freed again once the job ended"


class TinyControlModel(torch.nn.Module):
    """A seeded random stand-in of a ControlNet's control model: one residual per skip join of the
    test UNet, then the middle block's (Forge's order), each a function of the latent and the hint."""

    def __init__(self, unet, seed: int) -> None:
        super().__init__()
        from sd_ov import feature_shapes

        torch.manual_seed(seed)
        self.unet = [unet]  # not a submodule
        channels = [c for c, _, _ in feature_shapes(unet, 32, 32)]
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(4, c, 1) for c in channels)

    def forward(self, x, hint, timesteps, context, y=None):
        from sd_ov import feature_shapes

        shapes = feature_shapes(self.unet[0], x.shape[2], x.shape[3])
        out = []
        for conv, (_, h, w) in zip(self.convs, shapes, strict=True):
            out.append(conv(torch.nn.functional.interpolate(x, size=(h, w))) * 0.3 + hint.mean())
        return out


def units(forge, *ranges, seed: int = 5):
    """Forge ControlNet units with their timestep ranges (UNet timesteps, high to low; None: all)."""
    from backend.patcher.controlnet import ControlNet

    made = []
    for n, timesteps in enumerate(ranges):
        unit = ControlNet(TinyControlModel(forge.unet, seed + n)).set_cond_hint(
            torch.full((1, 3, 8, 8), 0.1 * (n + 1))
        )
        unit.timestep_range = timesteps
        made.append(unit)
    return made


def test_forge_controlnet_units_are_served_with_their_residuals(forge):
    """Forge's ControlNet units (its `c["control"]` per call) go into the OpenVINO UNet's residual
    inputs: one unit, two units, a unit for part of the steps (zeros where it sends none), each
    as Forge's torch UNet with the same units; the job after them is served without."""
    plain, _ = forge_job(forge, "None")
    for case in [(None,), (None, None), ((999, 500),)]:
        torch_latent, _ = forge_job(forge, "None", units=units(forge, *case))
        latent, info = forge_job(forge, units=units(forge, *case))
        assert info["OpenVINO"] == SERVED, (case, info)
        count = len(case)
        assert info["OpenVINO ControlNet"] == (
            f"{count} unit{'s' if count > 1 else ''} (ControlNet): residuals into the OpenVINO UNet, "
            "control models on torch (Forge's ControlNet class is its own: not exported yet)"
        ), info
        assert metrics.rel_l2(torch_latent, plain) > 0.01, "the units changed torch's picture"
        assert metrics.rel_l2(latent, torch_latent) <= MATCH, case
    after, info = forge_job(forge)
    assert info["OpenVINO"] == SERVED and "OpenVINO ControlNet" not in info
    assert metrics.rel_l2(after, plain) <= MATCH


def test_forge_controlnet_with_deepcache_and_units_it_cannot_serve(forge):
    """DeepCache's pair takes the units' residuals too (served, DeepCache in the infotext, the
    units' effect kept); a T2I-Adapter unit makes the job torch's, with the reason."""
    from backend.patcher.controlnet import T2IAdapter

    cached, _ = forge_job(forge, deepcache=2, steps=6)
    latent, info = forge_job(forge, units=units(forge, None), deepcache=2, steps=6)
    assert info["OpenVINO"].startswith("fp32+DeepCache") and "OpenVINO DeepCache" in info, info
    assert info["OpenVINO ControlNet"].startswith("1 unit (ControlNet)"), info
    assert metrics.rel_l2(latent, cached) > 0.01, "the residuals reached DeepCache's pair"

    def adapter():
        return T2IAdapter(lambda x: [torch.zeros(1)], 3, 8, "nearest-exact")

    torch_latent, _ = forge_job(forge, "None", units=[adapter()])
    latent, info = forge_job(forge, units=[adapter()])
    assert info["OpenVINO"] == "off (ControlNet in Forge: T2IAdapter units are not served on OpenVINO yet)", (
        info
    )
    assert torch.equal(latent, torch_latent)


@pytest.fixture
def forge_vae(forge):
    """Forge's model with a VAE (its patcher over ldm's modules, tiny), the checkpoint file holding
    its weights under `first_stage_model.` as a real checkpoint does."""
    from backend.patcher.vae import VAE
    from safetensors.torch import load_file, save_file

    from ..conftest import TinyAutoencoderKL

    model = forge.webui.shared.sd_model
    vae = TinyAutoencoderKL()
    vae.process_out = lambda latent: latent / 0.18215
    model.forge_objects.vae = model.forge_objects_original.vae = VAE(vae)
    model.forge_objects_after_applying_lora.vae = model.forge_objects.vae
    path = forge.webui.info.filename
    state = load_file(path)
    state.update({f"first_stage_model.{k}": v.contiguous() for k, v in vae.state_dict().items()})
    save_file(state, path)
    return forge


def test_forges_vae_decodes_on_openvino(forge_vae):
    """Forge's `decode_first_stage` on OpenVINO for the job (exported from ldm's modules loaded
    with the file's VAE weights): as Forge's torch decode of the same latent; the infotext says
    so, and that the text encoders are Forge's; a torch job decodes with Forge's own; a VAE chosen
    in Forge's VAE / Text Encoder list stays on torch, with why."""
    forge = forge_vae
    model = forge.webui.shared.sd_model
    latent, info = forge_job(forge)
    assert info["OpenVINO"] == SERVED and info["OpenVINO VAE"] == "decode", info
    assert "text encoders: Forge's own" in info["OpenVINO note"]
    reference = type(model).decode_first_stage(model, latent)
    assert metrics.rel_l2(forge.decoded, reference) <= MATCH and not torch.equal(forge.decoded, reference)
    forge_job(forge, "None")
    assert "decode_first_stage" not in vars(model), "Forge's own decode is back for a torch job"
    forge.webui.shared.opts.forge_additional_modules = ["/models/VAE/other.safetensors"]
    _, info = forge_job(forge)
    assert (
        "OpenVINO VAE" not in info
        and "VAE on torch: a VAE or text encoder chosen in Forge's" in info["OpenVINO note"]
    )


@pytest.fixture
def forge_clip(forge):
    """Forge's model with its SD1.x text engine over a tiny CLIPTextModel (its IntegratedCLIP), a
    CLIP patcher for LoRAs, and the checkpoint file holding the CLIP's weights as a real one does."""
    from backend.patcher.clip import CLIP
    from backend.text_processing.classic_engine import ClassicTextProcessingEngine
    from safetensors.torch import load_file, save_file

    from ..conftest import TinyCLIPTextModel

    clip = TinyCLIPTextModel(TINY_SD1["context_dim"])
    path = forge.webui.info.filename
    state = load_file(path)
    state.update({f"cond_stage_model.transformer.{k}": v.contiguous() for k, v in clip.state_dict().items()})
    save_file(state, path)
    model = forge.webui.shared.sd_model
    holder = torch.nn.Module()
    holder.transformer = clip
    model.text_processing_engine = ClassicTextProcessingEngine(holder, embedding_key="clip_l")
    model.forge_objects.clip = model.forge_objects_original.clip = CLIP({"clip_l": holder})
    model.forge_objects_after_applying_lora.clip = model.forge_objects.clip
    return forge


def test_forges_sd1_text_engine_encodes_on_openvino(forge_clip):
    """Forge's SD1.x `encode_with_transformers` on OpenVINO (the graph exported from the file's
    CLIP weights): as its torch encode, at clip skip 1 and 2, textual-inversion vectors included;
    a LoRA on Forge's CLIP patcher makes it torch's with the reason; a torch job encodes with
    Forge's own."""
    forge = forge_clip
    engine = forge.webui.shared.sd_model.text_processing_engine
    _, info = forge_job(forge)
    assert info["OpenVINO text encoder"] == "clip skip 1", info
    own = type(engine).encode_with_transformers
    assert metrics.rel_l2(forge.encoded, own(engine, forge.tokens)) <= MATCH
    engine.clip_skip = 2
    vector = torch.randn(2, TINY_SD1["context_dim"], generator=torch.Generator().manual_seed(3))
    engine.embeddings.fixes = [[(4, vector)], []]
    served = engine.encode_with_transformers(forge.tokens)
    engine.embeddings.fixes = [[(4, vector)], []]
    reference = own(engine, forge.tokens)
    assert metrics.rel_l2(served, reference) <= MATCH and engine.embeddings.fixes is None
    clip = forge.webui.shared.sd_model.forge_objects.clip
    clip.patcher.lora_patches = {("/models/Lora/ink.safetensors", 0.8, 1.0, False): {"layer": [1]}}
    _, info = forge_job(forge)
    assert info["OpenVINO text encoder"] == "torch (LoRA ink:0.8 changes the text encoder)", info
    assert torch.equal(forge.encoded, own(engine, forge.tokens))
    forge_job(forge, "None")
    assert "encode_with_transformers" not in vars(engine)


def test_the_accordion_says_what_will_run_before_forges_first_job(forge):
    """Forge loads the chosen checkpoint at its first job (until then its model is a stand-in
    without a checkpoint): the accordion reads the chosen checkpoint, not 'torch will run'."""
    from modules import shared

    loaded = shared.sd_model
    shared.sd_model = SimpleNamespace(cond_stage_model=None, chunk_length=75)  # its FakeInitialModel
    shared.opts.sd_model_checkpoint = forge.webui.info.title
    try:
        status = forge.webui.pkg.accordion.status_html()
    finally:
        shared.sd_model = loaded
    assert "Checkpoint: tinyckpt (loads at the first job)" in status, status
    assert "torch UNet will run" not in status and "Recipe:" in status


def test_an_inpainting_checkpoint_in_forge_is_served(forge, tmp_path):
    """Forge concatenates an inpainting job's mask and masked picture's latent to the latent
    (KModel's `c_concat`) before its UNet: a 9-channel checkpoint's UNet serves those calls on
    OpenVINO, as Forge's torch UNet computes them."""
    from backend.diffusion_engine.base import ForgeDiffusionEngine, ForgeObjects
    from backend.modules.k_model import KModel
    from backend.nn.unet import IntegratedUNet2DConditionModel
    from backend.patcher.unet import UnetPatcher
    from modules import shared

    from sd_ov.graphs.ldm_unet import build_unet

    from .harness import checkpoint

    unet = build_unet(dict(TINY_SD1, in_channels=9), seed=5)
    info = checkpoint(tmp_path, "inpaintckpt", unet)
    forge.webui.sd_unet.list_unets()
    unet.__class__ = IntegratedUNet2DConditionModel
    shared.sd_model = ForgeDiffusionEngine(
        ForgeObjects(UnetPatcher(KModel(unet)), clip=None, vae=None, clipvision=None), info
    )
    forge.webui.callbacks.model_loaded_callback(shared.sd_model)
    forge.unet = unet
    concat = torch.randn(1, 5, 32, 32, generator=torch.Generator().manual_seed(2))
    torch_latent, _ = forge_job(forge, "None", concat=concat)
    latent, info_ = forge_job(forge, concat=concat)
    assert info_["OpenVINO"] == SERVED, info_
    assert metrics.rel_l2(latent, torch_latent) <= MATCH
