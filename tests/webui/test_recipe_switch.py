"""Issue #24: a switch between two OpenVINO recipes of the loaded checkpoint reads nothing back
and compiles no VAE or text encoder again; a switch to torch gives torch everything back."""

from __future__ import annotations

import pytest
import torch

from sd_ov import Recipe
from sd_ov.optimize.run import optimize
from sd_ov.runtime import torch_weights
from sd_ov.runtime.torch_weights import is_released

from .harness import add_vae_and_text_encoder, infotext_params, txt2img

ON = {"sd_ov_vae": True, "sd_ov_text_encoder": True}


@pytest.mark.parametrize("webui", ["micro"], indirect=True)  # NNCF and tracing are most of its time
def test_a_recipe_switch_keeps_the_unet_freed_and_the_vae_and_text_encoder_compiled(
    webui, monkeypatch, tmp_path
):
    from sd_ov_webui.checkpoints import checkpoint_identity
    from sd_ov_webui.settings import cache_root

    webui.shared.opts.sd_ov_cache_dir = str(tmp_path / "cache")  # its INT8 entry is its own
    model = add_vae_and_text_encoder(webui)
    unet_module = model.model.diffusion_model
    original = {n: p.detach().clone() for n, p in unet_module.named_parameters()}
    # a second recipe of the checkpoint: INT8 weights by NNCF (no calibration, no measurement)
    name, sha256 = checkpoint_identity(webui.info)
    optimize(
        unet_module, cache_root(), name, sha256, Recipe(int8="weights"), measure=None, cache_compiled=False
    )
    webui.sd_unet.list_unets()
    plain_label, int8_label = (o.label for o in webui.sd_unet.unet_options)
    plain = txt2img(webui, override={"sd_unet": plain_label, **ON})
    before = webui.sd_unet.current_unet
    vae_model, text_model = before.vae.ov, before.text_encoder.ov
    assert is_released(unet_module) and is_released(model.first_stage_model)

    restores = []
    real_restore = torch_weights.ReleasedWeights.restore

    def counted(self, *args, **kwargs):
        restores.append(self)
        return real_restore(self, *args, **kwargs)

    monkeypatch.setattr(torch_weights.ReleasedWeights, "restore", counted)
    int8 = txt2img(webui, override={"sd_unet": int8_label, **ON})
    after = webui.sd_unet.current_unet
    params = infotext_params(int8.infotexts[0])
    assert after is not before and params["OpenVINO"].startswith("int8w, CPU"), params
    assert params["OpenVINO VAE"] == "decode" and params["OpenVINO text encoder"] == "clip skip 1", params
    assert restores == [], "nothing read back from the checkpoint at the switch"
    assert after.vae.ov is vae_model and after.text_encoder.ov is text_model  # not compiled again
    assert before.companions.vae is None and before.weights is None  # the old option keeps nothing
    assert is_released(unet_module) and not torch.equal(int8.latent, plain.latent)  # INT8 weights ran

    again = txt2img(webui, override={"sd_unet": plain_label, **ON})
    assert torch.equal(again.latent, plain.latent) and restores == []
    assert torch.equal(again.decoded, plain.decoded)

    # to an option that cannot open (its entry deleted): what it was handed goes back to torch
    stale = webui.pkg.options.OpenVINOUnetOption(webui.info, Recipe(int8="hybrid"))
    webui.sd_unet.unet_options.append(stale)
    failed = txt2img(webui, override={"sd_unet": stale.label, **ON})
    params = infotext_params(failed.infotexts[0])
    assert params["OpenVINO"].startswith("off (INT8 of tinyckpt is not in"), params
    assert "OpenVINO VAE" not in params and "OpenVINO text encoder" not in params, params
    assert not is_released(unet_module) and not is_released(model.first_stage_model)
    assert all(torch.equal(p, original[n]) for n, p in unet_module.named_parameters())

    # to torch: the weights come back bit-exactly and the webui's own VAE methods are back
    txt2img(webui, override={"sd_unet": int8_label, **ON})
    txt2img(webui, enabled=False, override=ON)
    assert webui.sd_unet.current_unet is None and len(restores) >= 1
    assert all(torch.equal(p, original[n]) for n, p in unet_module.named_parameters())
    assert not is_released(model.first_stage_model) and "decode" not in vars(model.first_stage_model)
