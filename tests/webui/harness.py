"""The webui stand-in (tests/webui/stub) with a tiny real ldm UNet loaded as the checkpoint, and
helpers to run jobs through the adapter as the webui would."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
STUB = Path(__file__).resolve().parent / "stub"


@pytest.fixture(scope="session")
def stub_modules():
    sys.path.insert(0, str(STUB))
    from modules import sd_hijack_unet

    sd_hijack_unet.hijack()
    yield
    sd_hijack_unet.undo()
    sys.path.remove(str(STUB))


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("webui-models")


def load_script(path: Path):
    """As modules/script_loading.load_module does it."""
    spec = importlib.util.spec_from_file_location(path.name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def checkpoint(folder: Path, name: str, unet: torch.nn.Module):
    from modules import sd_models

    path = folder / f"{name}.safetensors"
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in unet.state_dict().items()}, str(path))
    info = sd_models.CheckpointInfo(str(path))
    info.register()
    return info


@pytest.fixture
def webui(request, stub_modules, tiny_unet, tmp_path, shared_cache):
    """The stand-in webui with the tiny UNet's checkpoint loaded; `indirect` parametrization with
    "micro" loads the micro UNet's instead, with its attention at full resolution where token
    merging works (for tests whose cost is mostly NNCF and tracing)."""
    from modules import paths, script_callbacks, scripts, sd_hijack, sd_models, sd_unet, shared

    script_callbacks.clear_callbacks()
    sd_hijack.model_hijack.circular_enabled = False
    shared.loaded_hypernetworks.clear()
    shared.opts = shared.Options()
    # The VAE at f32 whatever this CPU runs fastest ("auto" may pick bf16): tests compare the
    # decode with torch's; bf16 has its own test.
    shared.opts.sd_ov_vae_precision = "f32"
    shared.state = shared.State()
    sd_unet.current_unet = sd_unet.current_unet_option = None
    paths.models_path = str(shared_cache)
    sd_models.checkpoints_list.clear()
    if getattr(request, "param", "tiny") == "micro":
        from sd_ov.graphs.ldm_unet import build_unet

        from ..conftest import MICRO_TOME

        unet = build_unet(MICRO_TOME, seed=0)
    else:
        unet = copy.deepcopy(tiny_unet)
    info = checkpoint(tmp_path, "tinyckpt", unet)
    shared.sd_model = SimpleNamespace(
        model=SimpleNamespace(diffusion_model=unet), sd_checkpoint_info=info, lowvram=False
    )
    module = load_script(ROOT / "scripts" / "openvino_unet.py")
    import sd_ov_webui

    script_callbacks.ui_settings_callback()
    sd_unet.list_unets()
    yield SimpleNamespace(
        module=module,
        pkg=sd_ov_webui,
        shared=shared,
        sd_unet=sd_unet,
        scripts=scripts,
        info=info,
        script=module.OpenVINOScript(),
        callbacks=script_callbacks,
        tmp_path=tmp_path,
    )
    if sd_unet.current_unet is not None:
        sd_unet.current_unet.deactivate()
    sd_unet.current_unet = sd_unet.current_unet_option = None
    script_callbacks.script_unloaded_callback()


def add_vae_and_text_encoder(webui):
    """The loaded model gets a (tiny) VAE and SD1.x prompt encoder, and its checkpoint file their
    weights under the webui's keys, as a real checkpoint has them. Call before the first job."""
    from modules.sd_hijack_clip import FrozenCLIPEmbedder, FrozenCLIPEmbedderWithCustomWords

    from sd_ov.graphs.ldm_unet import describe

    from ..conftest import TinyAutoencoderKL, TinyCLIPTextModel

    model = webui.shared.sd_model
    model.first_stage_model = TinyAutoencoderKL()
    clip = TinyCLIPTextModel(describe(model.model.diffusion_model).context_dim)
    state = {f"model.diffusion_model.{k}": v for k, v in model.model.diffusion_model.state_dict().items()}
    state.update({f"first_stage_model.{k}": v for k, v in model.first_stage_model.state_dict().items()})
    state.update({f"cond_stage_model.transformer.{k}": v for k, v in clip.state_dict().items()})
    save_file({k: v.contiguous() for k, v in state.items()}, webui.info.filename)
    webui.info.sha256 = None
    model.cond_stage_model = FrozenCLIPEmbedderWithCustomWords(FrozenCLIPEmbedder(clip))
    return model


def txt2img(
    webui,
    enabled=True,
    steps=4,
    seed=3,
    deepcache=(-1, 0, "uniform"),  # the accordion's default: the recipe's own schedule
    hires=False,
    override=None,
    prompt="a red fox",
    negative_prompt="",
    width=256,
    height=256,
    also=(),
    cfg_scale=7.0,
    init_image=None,
    tiling=False,
):
    """`also`: other extensions' always-on scripts of the job (the ControlNet stand-in, ...);
    `init_image` ([-1, 1], [1, 3, H, W]) makes it an img2img job from that picture."""
    from modules import processing, scripts

    from sd_ov.graphs.ldm_unet import describe

    width_of_context = describe(webui.shared.sd_model.model.diffusion_model).context_dim
    gen = torch.Generator().manual_seed(99)
    cond, uncond = (torch.randn(1, 77, width_of_context, generator=gen) for _ in range(2))
    runner = scripts.ScriptRunner([(webui.script, [enabled, *deepcache]), *((script, []) for script in also)])
    kind, picture = processing.StableDiffusionProcessing, {}
    if init_image is not None:
        kind, picture = processing.StableDiffusionProcessingImg2Img, {"init_image": init_image}
    p = kind(
        webui.shared.sd_model,
        cond,
        uncond,
        **picture,
        steps=steps,
        seed=seed,
        width=width,
        height=height,
        scripts=runner,
        script_args=runner.script_args,
        override_settings=override,
        cfg_scale=cfg_scale,
    )
    p.enable_hr = hires
    p.tiling = tiling
    p.prompt, p.negative_prompt = prompt, negative_prompt
    return processing.process_images(p)


# modules/infotext_utils.py: re_param_code and unquote, as parse_generation_parameters reads a line.
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def infotext_params(infotext: str) -> dict:
    params = {}
    for key, value in RE_PARAM.findall(infotext):
        value = value.strip()
        if len(value) > 1 and value[0] == '"' and value[-1] == '"':
            value = json.loads(value)
        params[key] = value
    return params


def openvino_infotext(job) -> str | None:
    return infotext_params(job.infotexts[0]).get("OpenVINO")


def openvino_runtime_error() -> RuntimeError:
    """A RuntimeError raised by OpenVINO's own code, as a device lost or a compile the device refuses
    reaches sd-ov: compiling for a device this machine does not have."""
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([1], ov.Type.f32)
    try:
        ov.Core().compile_model(ov.Model([ops.relu(x)], [x]), "NO_SUCH_DEVICE")
    except RuntimeError as err:
        return err
    raise AssertionError("OpenVINO compiled for a device that does not exist")


OPENVINO_SAYS = 'OpenVINO: Device with "NO_SUCH_DEVICE" name is not registered in the OpenVINO Runtime'


def faulty_runtime_job(webui, monkeypatch, fault):
    """(torch's job, the job whose OpenVINO runtime calls go through `fault(n, call)`, calls made):
    `call()` runs the real compiled UNet; `n` counts from 1 within the faulty job."""
    webui.shared.opts.sd_unet = "None"
    torch_job = txt2img(webui)
    webui.shared.opts.sd_unet = "Automatic"
    txt2img(webui)
    runtime = webui.sd_unet.current_unet.served.plain
    calls = []
    real_call = type(runtime).__call__

    def faulty(self, *args):
        calls.append(1)
        return fault(len(calls), lambda: real_call(self, *args))

    monkeypatch.setattr(type(runtime), "__call__", faulty)
    return torch_job, txt2img(webui), len(calls)
