"""Which webui hosts sd-ov, told once at start from what is importable, and named in the console."""

from __future__ import annotations

import importlib.util
from functools import cache


@cache
def is_forge() -> bool:
    """stable-diffusion-webui-forge with its Forge 2 backend (`backend/`, `modules_forge/`)."""
    return all(importlib.util.find_spec(name) is not None for name in ("modules_forge", "backend"))


def host_name() -> str:
    return "stable-diffusion-webui-forge" if is_forge() else "AUTOMATIC1111's stable-diffusion-webui"
