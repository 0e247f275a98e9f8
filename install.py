"""Run by the webui at start (as `python install.py`, webui root on PYTHONPATH): installs what
sd-ov needs into the webui's venv, only when missing or too old.

It never installs, upgrades or downgrades the webui's own packages: every package the webui pins
that is present is passed to pip as a constraint at its installed version, so a resolver that
would move one fails loudly instead of breaking the webui. torch is never a target.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import tempfile

# package: (minimum version, pip requirement)
REQUIREMENTS = {
    "openvino": ("2024.4.0", "openvino>=2024.4,<2027"),
    "nncf": ("2.13.0", "nncf>=2.13,<4"),
    # The cache's entry lock on Windows and Linux alike (torch brings one; older ones lack thread_local).
    "filelock": ("3.12.0", "filelock>=3.12"),
}
# The webui's pins (requirements_versions.txt of v1.10) and what they drag along.
PROTECTED = (
    "torch",
    "torchvision",
    "torchaudio",
    "xformers",
    "transformers",
    "tokenizers",
    "gradio",
    "gradio_client",
    "numpy",
    "pydantic",
    "fastapi",
    "starlette",
    "httpx",
    "accelerate",
    "safetensors",
    "pillow",
    "protobuf",
    "open-clip-torch",
    "einops",
    "omegaconf",
    "scikit-image",
    "kornia",
    "lightning",
    "pytorch_lightning",
    "spandrel",
    "diskcache",
    "jsonmerge",
    "psutil",
    "tomesd",
)


# Forge ships neither ldm nor sgm: sd-ov exports SD1.x/SD2.x UNets with ldm's class, which PyPI's
# stable-diffusion-sdkit carries as the same `ldm` package (without its 2022 pins: --no-deps).
LDM_FOR_FORGE = "stable-diffusion-sdkit==2.1.5"


def needs_ldm(webui_root: str) -> bool:
    """A Forge checkout whose venv has no `ldm` package."""
    import importlib.util

    return is_forge(webui_root) and importlib.util.find_spec("ldm") is None


# Nor sgm, SDXL's UNet class: Stability's generative-models, cloned into the webui's repositories/
# at the commit A1111 v1.10 pins (the same variables override them, as in A1111's launch_utils).
SGM_REPO = os.environ.get("STABLE_DIFFUSION_XL_REPO", "https://github.com/Stability-AI/generative-models.git")
SGM_COMMIT = os.environ.get("STABLE_DIFFUSION_XL_COMMIT_HASH", "45c443b316737a4ab6e40413d7794a7f5657c19f")


def is_forge(webui_root: str) -> bool:
    return os.path.isdir(os.path.join(webui_root, "modules_forge"))


def fetch_sgm(launch, webui_root: str) -> None:
    """SDXL in Forge: generative-models in repositories/ unless there; a failed clone leaves SDXL
    on torch (the infotext says why), never a failed start."""
    import importlib.util

    folder = os.path.join(webui_root, "repositories", "generative-models")
    if importlib.util.find_spec("sgm") is not None or os.path.isdir(os.path.join(folder, "sgm")):
        return
    try:
        launch.git_clone(SGM_REPO, folder, "Stable Diffusion XL (sd-ov in Forge)", SGM_COMMIT)
    except Exception as err:  # offline, no git: SDXL stays on torch in Forge
        print(f"sd-ov: could not fetch generative-models ({err}); SDXL stays on torch in Forge")


def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version.split("+")[0])[:3])


def missing_requirements() -> list[str]:
    """The requirements to install: absent, or older than the minimum."""
    todo = []
    for package, (minimum, requirement) in REQUIREMENTS.items():
        version = installed_version(package)
        if version is None or version_key(version) < version_key(minimum):
            todo.append(requirement)
    return todo


def write_constraints(folder: str) -> str:
    """A pip constraints file pinning every protected package that is installed, as installed."""
    lines = [f"{p}=={v}" for p in PROTECTED if (v := installed_version(p))]
    path = os.path.join(folder, "sd_ov_constraints.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def tokenizers_requirement() -> str | None:
    """openvino-tokenizers of the installed openvino's release (its ops are built against it): the
    GenAI export converts the webui's CLIP tokenizer with it. None when it is there already."""
    ov = installed_version("openvino")
    have = installed_version("openvino-tokenizers")
    if ov is None or (have is not None and version_key(have) == version_key(ov)):
        return None
    return f"openvino-tokenizers~={'.'.join(str(n) for n in version_key(ov))}.0"


def main() -> None:
    import launch  # the webui's module: available when the webui runs this file

    webui_root = os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] or os.getcwd()
    if needs_ldm(webui_root):
        launch.run_pip(f'install --no-deps "{LDM_FOR_FORGE}"', "sd-ov: the ldm UNet class for Forge")
    if is_forge(webui_root):
        fetch_sgm(launch, webui_root)
    todo = missing_requirements()
    if todo:
        with tempfile.TemporaryDirectory() as folder:
            constraints = write_constraints(folder)
            targets = " ".join(f'"{r}"' for r in todo)
            launch.run_pip(f'install {targets} -c "{constraints}"', f"sd-ov requirements: {', '.join(todo)}")
    tokenizers = tokenizers_requirement()
    if tokenizers:  # after openvino: its version picks theirs, and openvino stays as it is
        with tempfile.TemporaryDirectory() as folder:
            constraints = write_constraints(folder)
            with open(constraints, "a", encoding="utf-8") as f:
                f.write(f"openvino=={installed_version('openvino')}\n")
            launch.run_pip(
                f'install "{tokenizers}" -c "{constraints}"', "sd-ov: openvino-tokenizers (the GenAI export)"
            )


if __name__ == "__main__":
    main()
