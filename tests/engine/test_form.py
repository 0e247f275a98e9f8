"""One Optimize form for the CLI, the tab and the API; canonical recipes; telemetry off."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sd_ov.errors import DeviceNotFoundError
from sd_ov.optimize.fields import optimize_defaults
from sd_ov.optimize.form import parse_optimize_form, parse_size, parse_sizes
from sd_ov.store.recipe import Recipe


def test_inert_and_nearly_equal_fields_make_one_recipe():
    """The form normalises what changes nothing (the tab's own inputs: webui/test_tab_api.py)."""
    base = parse_optimize_form({**optimize_defaults(), "int8": "hybrid", "tome": 0.5})
    same = parse_optimize_form(
        {**optimize_defaults(), "int8": "hybrid", "tome": 0.5000001, "prune_ratio": 30}
    )
    assert base.recipe.key() == same.recipe.key() and base.recipe.label() == "INT8 ToMe0.5"


def test_inert_fields_are_normalised():
    assert Recipe(prune="off", prune_ratio=0.2) == Recipe()
    assert (
        Recipe(int8="hybrid", smooth_quant=True).key() == Recipe(int8="hybrid").key()
    )  # SQ acts on full only
    assert Recipe(int8="full", smooth_quant=True).label() == "INT8full+SQ"
    assert Recipe(int8="weights", samples=3) == Recipe(int8="weights")  # not calibrated: samples inert
    assert Recipe(prune="ffn", prune_ratio=0.2).key() != Recipe(prune="ffn", prune_ratio=0.3).key()


def test_deepcache_is_a_typed_part_of_the_recipe():
    plain = Recipe().with_deepcache(1)
    assert plain.key() == {"name": "fp32-deepcache-b1", "weights": "fp32", "deepcache_branch": 1}  # as ever
    assert Recipe.from_key(plain.key()) == plain and plain.base == Recipe() and plain.is_plain
    int8 = Recipe(int8="hybrid").with_deepcache(0)
    assert int8.key()["deepcache_branch"] == 0 and Recipe.from_key(int8.key()) == int8
    with pytest.raises(ValueError, match="branch"):
        Recipe(deepcache_branch=-1)


def test_sizes():
    assert parse_size("512x768") == (512, 768) and parse_sizes("512x512, 768x512;") == [
        (512, 512),
        (768, 512),
    ]
    assert parse_sizes("") == []
    for bad, message in [("512", "WIDTHxHEIGHT"), ("500x512", "multiples of 8"), ("0x64", "between")]:
        with pytest.raises(ValueError, match=message):
            parse_size(bad)
    assert parse_size("520x200", multiple=8) == (520, 200)
    with pytest.raises(ValueError, match="multiples of 8"):
        parse_size("517x200", multiple=8)


def test_form_shapes_and_checks():
    request = parse_optimize_form(
        {"sizes_text": "512x512,768x512", "batch": 2, "chunks": 2, "prompts_text": None}
    )
    assert request.shapes == ((4, 64, 64, 154), (4, 64, 96, 154))
    # the IR takes any latent size (sides multiples of 8 px); token merging's windows even ones
    odd = {"sizes_text": "520x200", "measure_size": "520x200", "prompts_text": None}
    assert parse_optimize_form(odd).shapes == ((2, 25, 65, 77),)
    with pytest.raises(ValueError, match="multiples of 16 px.*token merging's 2x2 windows"):
        parse_optimize_form({**odd, "tome": 0.5})
    assert request.measure().batch == 4 and request.measure().tokens == 154
    assert len(request.calibration.prompts) == 4  # the shipped prompts
    assert (
        parse_optimize_form({"int8": "weights", "prompts_text": ""}).recipe.label() == "INT8w"
    )  # no calibration
    for values, message in [
        ({"unknown": 1}, "unknown Optimize fields"),
        ({"prune": "ffn", "prune_ratio": 95}, "between 0 and 90"),
        ({"calib_steps": "many"}, "must be a number"),
        ({"batch": 9}, "between 1 and 8"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_optimize_form(values)
    with pytest.raises(DeviceNotFoundError, match="GPU.7"):
        parse_optimize_form({"device": "GPU.7"})


def test_the_cli_refuses_bad_input_before_any_work(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sd_ov",
            "optimize",
            "--measure-size",
            "100x100",
            "--cache",
            str(tmp_path / "c"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "multiples of 8" in done.stderr and not (tmp_path / "c").exists()


TELEMETRY_CONSENT = r"""
import sys
if sys.argv[1] == "with-sd-ov":
    import sd_ov
import openvino_telemetry
t = openvino_telemetry.Telemetry(app_name="probe", app_version="0", tid="none", enable_opt_in_dialog=False)
import nncf.telemetry.wrapper as nncf_telemetry
print("consent", t.consent, getattr(getattr(nncf_telemetry.telemetry, "_impl", None), "consent", None))
"""


def test_openvino_and_nncf_telemetry_are_off_in_our_processes(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CI", "TF_BUILD", "JENKINS_URL", "NNCF_CI", "NNCF_DEV")
    }
    env["HOME"] = str(tmp_path)  # no consent file: OpenVINO's own rule counts that as consent

    def run(mode: str) -> str:
        command = [sys.executable, "-c", TELEMETRY_CONSENT, mode]
        return subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path).stdout

    assert "consent True" in run("without"), "the probe must see telemetry on without sd-ov"
    assert run("with-sd-ov").strip() == "consent False False"
