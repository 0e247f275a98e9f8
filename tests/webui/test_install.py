"""install.py as the webui runs it: installs only what is missing, never moves the webui's pins."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def launch(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "launch_stub"))
    import launch

    launch.calls.clear()
    yield launch
    sys.modules.pop("launch", None)


def run_installer(monkeypatch, versions: dict[str, str | None]):
    """Run install.py as __main__ with some packages' installed versions overridden."""
    import importlib.metadata as md

    real = md.version

    def fake_version(name):
        if name in versions:
            if versions[name] is None:
                raise md.PackageNotFoundError(name)
            return versions[name]
        return real(name)

    monkeypatch.setattr(md, "version", fake_version)
    runpy.run_path(str(ROOT / "install.py"), run_name="__main__")


RECENT = {"openvino": "2026.4.1", "nncf": "3.4.0", "filelock": "3.20.0", "openvino-tokenizers": "2026.4.1.0"}


def test_nothing_to_do_when_everything_is_recent(launch, monkeypatch):
    run_installer(monkeypatch, RECENT)
    assert launch.calls == []


def test_missing_openvino_is_installed_with_the_webui_pins_as_constraints(launch, monkeypatch):
    seen = {}
    real_run_pip = launch.run_pip

    def run_pip(command, desc=None, live=False):
        constraints = command.split('-c "')[1].rstrip('"')
        seen["constraints"] = Path(constraints).read_text()
        return real_run_pip(command, desc)

    monkeypatch.setattr(launch, "run_pip", run_pip)
    run_installer(
        monkeypatch,
        {
            **RECENT,
            "openvino": None,
            "torch": "2.1.2",
            "numpy": "1.26.2",
            "gradio": "3.41.2",
            "transformers": "4.30.2",
        },
    )
    [(command, desc)] = launch.calls
    targets = command.split(" -c ")[0]
    assert targets == 'install "openvino>=2024.4,<2027"'
    assert "torch" not in targets and "numpy" not in targets
    for pin in ("torch==2.1.2", "numpy==1.26.2", "gradio==3.41.2", "transformers==4.30.2"):
        assert pin in seen["constraints"].splitlines()
    assert "openvino" in desc


def test_too_old_nncf_is_upgraded_alone(launch, monkeypatch):
    run_installer(
        monkeypatch, {**RECENT, "openvino": "2025.1.0", "openvino-tokenizers": "2025.1.0.0", "nncf": "2.7.0"}
    )
    [(command, _)] = launch.calls
    assert command.startswith('install "nncf>=2.13,<4" -c ')


def test_running_twice_installs_once(launch, monkeypatch):
    run_installer(monkeypatch, {**RECENT, "openvino": None})
    assert len(launch.calls) == 1
    run_installer(monkeypatch, RECENT)  # as the first run left it
    assert len(launch.calls) == 1


def test_a_temp_folder_with_spaces_and_non_ascii_letters_is_quoted(launch, monkeypatch, tmp_path):
    """Windows' temp folder is under the user's name (C:\\Users\\Zoë Müller\\AppData\\Local\\Temp):
    the constraints file's path reaches pip whole, and pip reads it."""
    import subprocess
    import tempfile

    temp = tmp_path / "Zoë Müller" / "Temp"
    temp.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    seen = {}

    def run_pip(command, desc=None, live=False):
        # as the webui runs it: one shell command line
        line = f'"{sys.executable}" -m pip {command} --dry-run --no-index --quiet'
        seen["pip"] = subprocess.run(line, shell=True, capture_output=True, text=True)
        seen["command"] = command

    monkeypatch.setattr(launch, "run_pip", run_pip)
    run_installer(monkeypatch, {**RECENT, "filelock": None})
    assert str(temp) in seen["command"]
    # pip read the constraints file (a path it could not open fails with "Could not open")
    assert "Could not open" not in seen["pip"].stderr and "No such file" not in seen["pip"].stderr, seen
    assert seen["pip"].returncode == 0, seen["pip"].stderr


def test_in_forge_without_ldm_the_ldm_package_is_added_without_its_pins(launch, monkeypatch, tmp_path):
    """Forge ships no ldm: the installer adds stable-diffusion-sdkit's `ldm` with --no-deps (its
    2022 pins never reach Forge's venv); in A1111 (no modules_forge) it adds nothing of it."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ldm" else real_find_spec(name, *a)
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    run_installer(monkeypatch, {})
    assert not any("stable-diffusion-sdkit" in call[0] for call in launch.calls)
    (tmp_path / "modules_forge").mkdir()
    run_installer(monkeypatch, {})
    ldm = [call[0] for call in launch.calls if "stable-diffusion-sdkit" in call[0]]
    assert ldm == ['install --no-deps "stable-diffusion-sdkit==2.1.5"'], launch.calls


def test_in_forge_generative_models_is_cloned_at_a1111s_commit_once(launch, monkeypatch, tmp_path):
    """Forge ships no sgm (SDXL's UNet class): the installer clones Stability's generative-models
    into the webui's repositories/ at A1111 v1.10's commit, not when it is there, and a failed
    clone (offline) is a console line, not a failed start."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "sgm" else real_find_spec(name, *a)
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    (tmp_path / "modules_forge").mkdir()
    run_installer(monkeypatch, RECENT)
    folder = tmp_path / "repositories" / "generative-models"
    clones = [call[0] for call in launch.calls if call[0].startswith("git clone")]
    assert clones == [
        f"git clone https://github.com/Stability-AI/generative-models.git {folder} "
        "@45c443b316737a4ab6e40413d7794a7f5657c19f"
    ]
    (folder / "sgm").mkdir(parents=True)
    launch.calls.clear()
    run_installer(monkeypatch, RECENT)
    assert launch.calls == []

    def offline(*args):
        raise RuntimeError("Couldn't clone Stable Diffusion XL")

    (folder / "sgm").rmdir()
    monkeypatch.setattr(launch, "git_clone", offline)
    run_installer(monkeypatch, RECENT)  # no exception


def test_openvino_tokenizers_of_the_installed_openvinos_release_is_added_with_openvino_pinned(
    launch, monkeypatch
):
    """The GenAI export converts the webui's tokenizer with openvino-tokenizers, whose ops are built
    against one openvino release: the installer adds the installed openvino's, and pins openvino
    for that call so pip cannot move it; a matching one already there is left alone."""
    seen = {}
    real_run_pip = launch.run_pip

    def run_pip(command, desc=None, live=False):
        seen["constraints"] = Path(command.split('-c "')[1].rstrip('"')).read_text()
        return real_run_pip(command, desc)

    monkeypatch.setattr(launch, "run_pip", run_pip)
    run_installer(monkeypatch, {**RECENT, "openvino-tokenizers": None})
    [(command, _)] = launch.calls
    assert command.startswith('install "openvino-tokenizers~=2026.4.1.0" -c ')
    assert "openvino==2026.4.1" in seen["constraints"].splitlines()
    launch.calls.clear()
    run_installer(monkeypatch, {**RECENT, "openvino-tokenizers": "2025.1.0.0"})  # another release's
    assert [c for c, _ in launch.calls] and launch.calls[0][0].startswith(
        'install "openvino-tokenizers~=2026.4.1.0"'
    )
