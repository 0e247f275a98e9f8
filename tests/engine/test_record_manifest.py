"""The job record (what the infotext says) and the typed manifest (what a cache entry holds)."""

from __future__ import annotations

import json

import pytest

from sd_ov.graphs.ldm_unet import UNetSpec
from sd_ov.serve.record import REASON_CHARS, JobRecord
from sd_ov.store.manifest import FileRecord, Manifest, Report
from sd_ov.store.recipe import Recipe


def test_a_job_served_by_openvino_says_what_ran():
    record = JobRecord(summary="fp32, CPU, f32, dynamic")
    assert record.seconds() == ""
    for i in range(4):
        record.served(10.0 + i, 10.5 + i)  # four 0.5 s calls, a second apart
    assert record.infotext() == "fp32, CPU, f32, dynamic" and record.calls == 4
    assert record.seconds() == "sampling 3.5 s (UNet 2.0 s in 4 calls)"


def test_a_partly_served_job_counts_calls_and_says_each_reason_once():
    record = JobRecord(summary="fp32, CPU, f32, dynamic")
    record.served(1.0, 2.0)
    assert record.fell_back("an odd latent side") is True
    assert record.fell_back("an odd latent side") is False  # said once in the progress area
    assert record.infotext() == "partly (1/3 calls; 2 on torch: an odd latent side); fp32, CPU, f32, dynamic"


def test_a_job_torch_made_says_why_and_never_repeats_an_earlier_claim():
    assert JobRecord(summary="fp32, CPU", unavailable="no device").infotext() == "off (no device)"
    record = JobRecord(summary="fp32, CPU")
    record.fell_back("another extension replaced the UNet's forward")
    assert record.infotext() == "off (another extension replaced the UNet's forward)"
    assert JobRecord(summary="fp32").infotext() == "off (no UNet call reached OpenVINO)"


def test_long_reasons_and_notes_are_shortened_and_notes_kept_once():
    record = JobRecord()
    long = "x " * 200
    record.fell_back(long)
    (reason,) = record.torch_calls
    assert len(reason) == REASON_CHARS and reason.endswith("…")
    record.note("bf16 asked, f32 ran")
    record.note("bf16  asked,\nf32 ran")  # the same words
    assert record.notes == ["bf16 asked, f32 ran"]


SPEC = UNetSpec(4, 4, 768, 320, 859_520_964, 8, latent_multiple=1)


def manifest(**changes) -> Manifest:
    fields = dict(
        checkpoint_name="sd15",
        checkpoint_hash="ab" * 32,
        recipe=Recipe(int8="hybrid", tome=0.5).with_deepcache(0),
        ir="unet_full.xml",
        files={"unet_full.xml": FileRecord(10, "d1"), "unet_full.bin": FileRecord(3_000, "d2")},
        unet=SPEC,
        models={"full": "unet_full.xml", "shallow": "unet_shallow.xml"},
        feature_channels=320,
        report=Report(label="INT8 ToMe0.5", speedup=2.1, psnr_db=38.6),
        preset="fastest",
    )
    return Manifest(**{**fields, **changes})


def test_a_manifest_survives_json_as_it_was_written():
    original = manifest()
    data = json.loads(json.dumps(original.to_json()))
    assert Manifest.from_json(data) == original
    assert data["disk_bytes"] == 3_010 and data["deepcache"] == {"branch": 0, "feature_channels": 320}
    assert data["report"] == {
        "label": "INT8 ToMe0.5",
        "device": "",
        "speedup": 2.1,
        "psnr_db": 38.6,
    }  # no Nones


def test_a_component_manifest_has_no_unet_and_keeps_its_models():
    vae = manifest(
        component="vae",
        unet=None,
        recipe=Recipe(),
        models={"decoder": "vae_decoder.xml"},
        feature_channels=None,
    )
    data = vae.to_json()
    assert (
        "unet" not in data and data["component"] == "vae" and data["models"] == {"decoder": "vae_decoder.xml"}
    )
    assert Manifest.from_json(data) == vae


@pytest.mark.parametrize("broken", [{}, {"checkpoint": {"name": "x"}}, {"files": "nope"}])
def test_what_is_not_an_sd_ov_manifest_raises(broken):
    data = {**manifest().to_json(), **broken} if broken else {}
    with pytest.raises((KeyError, TypeError, ValueError, AttributeError)):
        Manifest.from_json(data)
