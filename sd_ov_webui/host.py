"""Which webui hosts sd-ov, told once at start from what is importable, and named in the console."""

from __future__ import annotations

import importlib.util
from functools import cache

# Forge Classic and reForge: Forge 1's ComfyUI-derived backend (`ldm_patched`), whose UNet calls
# never reach the SD Unet (the webui's forward hook is commented out there too) and whose patcher
# is not Forge 2's. Said, not served: torch makes every picture.
NOT_SERVED_HERE = (
    "this webui is not supported yet: Forge Classic and reForge (the ldm_patched backend) route no "
    "UNet call to sd-ov; it serves in AUTOMATIC1111's webui and in Forge (main)"
)


def importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@cache
def is_forge() -> bool:
    """stable-diffusion-webui-forge with its Forge 2 backend (`backend/`, `modules_forge/`)."""
    return all(importable(name) for name in ("modules_forge", "backend"))


@cache
def not_served_here() -> str | None:
    """Why sd-ov serves no job in this webui; None where it serves (A1111, Forge 2)."""
    return NOT_SERVED_HERE if not is_forge() and importable("ldm_patched") else None


def host_name() -> str:
    if is_forge():
        return "stable-diffusion-webui-forge"
    if not_served_here():
        return "a Forge 1 webui (Forge Classic or reForge): not served yet, torch makes every picture"
    return "AUTOMATIC1111's stable-diffusion-webui"
