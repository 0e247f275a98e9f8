"""The GenAI export from the webui: `POST /sd-ov/v1/export-genai` and the tab's button write the
loaded checkpoint's entry (plain or a recipe) as the folder OpenVINO GenAI runs, with the loaded
model's tokenizer and the webui's clip skip; bad requests are 422 before any work, an Interrupt
leaves nothing. GenAI's fidelity to sd-ov's pictures: tests/engine/test_genai.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ..conftest import tiny_tokenizer
from .harness import add_vae_and_text_encoder, txt2img
from .test_lora import lora_ext  # noqa: F401 - the Lora extension stand-in (a fresh one per test)

genai = pytest.importorskip("openvino_genai", reason="openvino-genai is not installed")
pytest.importorskip("openvino_tokenizers", reason="openvino-tokenizers is not installed")


@pytest.fixture
def api(webui, tmp_path):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    webui.shared.opts.sd_ov_cache_dir = str(tmp_path / "cache")  # the entries these tests make, only
    model = add_vae_and_text_encoder(webui)
    model.cond_stage_model.wrapped.tokenizer = tiny_tokenizer(tmp_path / "tokenizer")
    app = FastAPI()
    webui.callbacks.app_started_callback(None, app)
    return TestClient(app)


def test_the_api_exports_the_loaded_checkpoint_and_genai_runs_it(api, webui, monkeypatch):
    from modules import paths

    assert api.post("/sd-ov/v1/export-genai", json={"recipe": "INT8 ToMe0.5"}).status_code == 422
    assert api.post("/sd-ov/v1/export-genai", json={"clip_skip": 0}).status_code == 422
    assert api.post("/sd-ov/v1/export-genai", json={"format": "onnx"}).status_code == 422
    txt2img(webui)  # the first job exports the plain entry
    webui.shared.opts.CLIP_stop_at_last_layers = 2
    answer = api.post("/sd-ov/v1/export-genai", json={})
    assert answer.status_code == 200, answer.text
    made = answer.json()
    assert (
        made["recipe"] == "FP32" and made["folder"].startswith(paths.models_path) and made["disk_bytes"] > 0
    )
    folder = made["folder"]
    assert json.loads(Path(folder, "model_index.json").read_text())["_sd_ov"] == {
        "recipe": "FP32",
        "clip_skip": 2,
        "loras": [],
        "sampler": "Euler",
        "vae": "float",
        "notes": [],
    }
    assert made["notes"] == []  # a sampler GenAI has no scheduler for: test_genai.py
    pipe = genai.Text2ImagePipeline(folder, "CPU")
    image = pipe.generate(
        "a cat", width=64, height=64, num_inference_steps=2, generator=genai.TorchGenerator(1)
    )
    picture = np.asarray(image.data)
    assert picture.shape == (1, 64, 64, 3) and picture.std() > 1

    def interrupted(message, fraction):
        if "tokenizer" in message:
            from sd_ov import Cancelled

            raise Cancelled("Interrupt")

    monkeypatch.setattr(webui.pkg.genai_export, "cancellable_progress", interrupted)
    again = api.post("/sd-ov/v1/export-genai", json={"folder": f"{folder}-again"})
    assert again.status_code == 409 and "nothing was written" in again.json()["detail"]
    assert not os.path.exists(f"{folder}-again")
    assert sorted(os.listdir(os.path.dirname(folder))) == [os.path.basename(folder)]


def test_the_tab_exports_the_chosen_entry(api, webui):
    txt2img(webui)
    tab = webui.pkg.tab
    assert "Nothing to export" in tab.export_choice("gone | FP32 | nowhere/none")
    [choice] = [c for c in tab.entry_choices() if c.startswith("tinyckpt |") and "| FP32 |" in c]
    said = tab.export_choice(choice)
    assert "Written for OpenVINO GenAI" in said, said


def test_the_tokenizer_and_clip_config_are_found_in_each_hosts_model(webui, tmp_path, monkeypatch):
    """host_clip finds CLIP-L's tokenizer and config where each host keeps them: A1111's SD1.x
    (cond_stage_model.wrapped), A1111's SDXL (cond_stage_model is the conditioner; its first
    embedder's wrapped), Forge's SD1.x and SDXL text engines, A1111's SD2 (CLIP's cached BPE); a
    model without one is refused. The scheduler's prediction type as each host says it."""
    from types import SimpleNamespace as NS

    from transformers import CLIPTokenizerFast

    from sd_ov import SdOvError

    from ..conftest import TinyCLIPTextModel

    host_clip = webui.pkg.genai_export.host_clip
    clip, tokenizer = TinyCLIPTextModel(48), tiny_tokenizer(tmp_path / "tok")
    wrapped = NS(tokenizer=tokenizer, transformer=clip)
    conditioner = NS(embedders=[NS(wrapped=wrapped), NS(wrapped=NS(model=None))])
    engine = NS(tokenizer=tokenizer, text_encoder=NS(transformer=clip))
    models = {
        "A1111 SD1.x": NS(cond_stage_model=NS(wrapped=wrapped)),
        "A1111 SDXL": NS(cond_stage_model=conditioner, conditioner=conditioner),
        "Forge SD1.x": NS(text_processing_engine=engine),
        "Forge SDXL": NS(text_processing_engine_l=engine, text_processing_engine_g=NS()),
    }
    for host, model in models.items():
        found, config = host_clip(model)
        assert isinstance(found, CLIPTokenizerFast) and found.get_vocab() == tokenizer.get_vocab(), host
        assert config.hidden_size == 48, host
    with pytest.raises(SdOvError, match="no CLIP text model"):
        host_clip(NS(cond_stage_model=NS(transformer=clip)))
    # A1111's SD2 (open_clip tokenizes): CLIP's BPE from the Hugging Face cache, or a clear message
    monkeypatch.setattr(
        CLIPTokenizerFast, "from_pretrained", lambda name: (_ for _ in ()).throw(OSError(name))
    )
    with pytest.raises(SdOvError, match="not in the Hugging Face cache"):
        host_clip(NS(cond_stage_model=NS(wrapped=NS(model=None))))
    monkeypatch.setattr(CLIPTokenizerFast, "from_pretrained", lambda name: tokenizer)
    assert host_clip(NS(cond_stage_model=NS(wrapped=NS(model=None)))) == (tokenizer, None)

    predicts = webui.pkg.genai_export.host_prediction_type
    assert (
        predicts(NS(parameterization="eps")) == "epsilon"
        and predicts(NS(parameterization="v")) == "v_prediction"
    )
    forge = NS(forge_objects=NS(unet=NS(model=NS(predictor=NS(prediction_type="v_prediction")))))
    assert predicts(forge) == "v_prediction"
    with pytest.raises(SdOvError, match="edm"):
        predicts(NS(forge_objects=NS(unet=NS(model=NS(predictor=NS(prediction_type="edm"))))))


HADA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


def test_the_api_bakes_the_loras_it_names(api, webui, lora_ext, tiny_unet):  # noqa: F811 - imported fixture
    """`loras` as in a prompt: loaded by the Lora extension's own load_networks (its weights and
    scale), baked into the folder's UNet as one branch per layer; a missing LoRA or a kind the
    branch can't take (LoHa) is a 422 naming it, and nothing is written."""
    import openvino as ov

    from .test_lora import LAYERS, _weights, lora_network

    networks = lora_ext.networks
    networks.available_networks["style"] = lora_network(lora_ext, webui, tiny_unet, "style", seed=1)
    txt2img(webui)
    missing = api.post("/sd-ov/v1/export-genai", json={"loras": "<lora:style:0.8> <lora:nope:1>"})
    assert missing.status_code == 422 and "LoRA not found: nope" in missing.json()["detail"]
    assert api.post("/sd-ov/v1/export-genai", json={"loras": "<lora:style:x>"}).status_code == 422
    answer = api.post("/sd-ov/v1/export-genai", json={"loras": "<lora:style:0.8>"})
    assert answer.status_code == 200, answer.text
    folder = Path(answer.json()["folder"])
    assert folder.name.endswith("-fp32-style-0.8"), folder
    assert json.loads((folder / "model_index.json").read_text())["_sd_ov"]["loras"] == ["style:0.8"]
    graph = ov.Core().read_model(str(folder / "unet" / "openvino_model.xml"))
    branches = [n for n in graph.get_ops() if n.get_friendly_name().endswith("/lora")]
    assert len(branches) == len(LAYERS) and networks.loaded_networks[0].unet_multiplier == 0.8

    path = LAYERS[0]
    layer = dict(webui.shared.sd_model.model.diffusion_model.named_modules())[path]
    out_f, in_f = dict(tiny_unet.named_modules())[path].weight.shape
    w = {k: torch.randn(out_f if k.endswith("a") else 2, 2 if k.endswith("a") else in_f) for k in HADA}
    loha = lora_ext.network.Network("loha")
    weights = _weights(lora_ext, path, layer, w)
    loha.modules[weights.network_key] = lora_ext.network_hada.NetworkModuleHada(loha, weights)
    networks.available_networks["other"] = lora_ext.network.Network("other")  # no layer of this model's
    unmatched = api.post(
        "/sd-ov/v1/export-genai", json={"loras": "<lora:other:1>", "folder": str(folder) + "-o"}
    )
    assert unmatched.status_code == 422 and "other changes no layer" in unmatched.json()["detail"]
    networks.available_networks["loha"] = loha
    refused = api.post(
        "/sd-ov/v1/export-genai", json={"loras": "<lora:loha:1>", "folder": str(folder) + "-h"}
    )
    assert refused.status_code == 422 and "LoHa" in refused.json()["detail"]
    assert not Path(str(folder) + "-h").exists()
