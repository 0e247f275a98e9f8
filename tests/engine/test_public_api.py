"""The engine's public API: what the adapter may use, loaded on first use."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import sd_ov

ROOT = Path(__file__).resolve().parents[2]


def test_every_public_name_resolves():
    missing = [name for name in sd_ov.__all__ if getattr(sd_ov, name, None) is None]
    assert missing == []


def test_the_constants_load_without_torch_or_openvino():
    code = (
        "import sys, sd_ov; sd_ov.PRECISIONS, sd_ov.INT8_MODES, sd_ov.SCHEDULES; "
        "print(sorted(m for m in ('torch', 'openvino', 'nncf') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_the_adapter_imports_only_the_public_api():
    """`from sd_ov import <public name>` only: no `sd_ov.<module>` reached into."""
    private = []
    for path in sorted([*(ROOT / "sd_ov_webui").glob("*.py"), *(ROOT / "scripts").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sd_ov."):
                private.append(f"{path.name}: from {node.module} import ...")
            elif isinstance(node, ast.ImportFrom) and node.module == "sd_ov":
                private += [f"{path.name}: {a.name}" for a in node.names if a.name not in sd_ov.__all__]
            elif isinstance(node, ast.Import):
                private += [f"{path.name}: {a.name}" for a in node.names if a.name.startswith("sd_ov.")]
    assert private == []
