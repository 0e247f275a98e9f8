"""Forge Classic and reForge (Forge 1's `ldm_patched` backend): not served yet. sd-ov says so where
a user looks (the console, the infotext), lists no SD Unet option that would do nothing, and torch
makes every picture, with no error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .harness import infotext_params, txt2img


@pytest.fixture
def classic(webui, monkeypatch):
    import sd_ov_webui.host as host

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "classic_stub"))
    for told in (host.is_forge, host.not_served_here):
        told.cache_clear()
    yield webui
    for told in (host.is_forge, host.not_served_here):
        told.cache_clear()


def test_forge_classic_is_told_and_torch_makes_the_pictures(classic):
    from sd_ov_webui import host

    assert "Forge Classic or reForge" in host.host_name()
    torch_job = txt2img(classic, enabled=False)
    classic.sd_unet.list_unets()
    assert not [o for o in classic.sd_unet.unet_options if o.label.startswith("[OpenVINO")]
    job = txt2img(classic)
    said = infotext_params(job.infotexts[0])["OpenVINO"]
    assert said == f"off ({host.NOT_SERVED_HERE})", said
    assert torch.equal(torch.as_tensor(job.latent), torch.as_tensor(torch_job.latent))
