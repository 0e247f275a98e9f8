"""The engine's parts import one way, and nothing imports in a loop.

Read from the sources (ast), every import counted: at a module's top, inside functions, under
`TYPE_CHECKING`. Layers, lowest first: the top-level modules (`constants`, `errors`, `progress`,
`privacy`), then `store` < `graphs` < `runtime` < `serve` < `optimize` < `tools`; a module imports
its own part and the parts below. `sd_ov/__init__.py` (the public API, loading lazily) and
`__main__` may reach any part. The adapter (`sd_ov_webui/`, `scripts/`) imports only `sd_ov`
itself, the public API, never a module inside it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("", "store", "graphs", "runtime", "serve", "optimize", "tools")  # "": the top modules
API = ("sd_ov", "sd_ov.__main__")


def module_names(root: Path, folders=("sd_ov", "sd_ov_webui", "scripts")) -> dict[str, Path]:
    found = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The known modules `name` imports (a package's name when only the package is imported)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        candidates = []
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in candidates:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
                break  # `from a.b import c`: the module c if it is one, else a.b
    return targets


def layer_of(name: str) -> int | None:
    parts = name.split(".")
    if parts[0] != "sd_ov" or name in API:
        return None
    return LAYERS.index(parts[1]) if len(parts) > 2 and parts[1] in LAYERS else 0


def problems(root: Path) -> list[str]:
    known = module_names(root)
    edges = {name: imports_of(name, path, known) for name, path in known.items()}
    found = []
    for name, targets in edges.items():
        for target in sorted(targets):
            in_engine = name == "sd_ov" or name.startswith("sd_ov.")
            if not in_engine:
                if target.startswith("sd_ov."):
                    found.append(f"{name} imports {target}: the adapter uses the public API (`sd_ov`) only")
                continue
            low, high = layer_of(target), layer_of(name)
            if low is not None and high is not None and low > high:
                below = LAYERS[high] or "top"
                found.append(f"{name} imports {target}: up the layers ({below} < {LAYERS[low]})")
    found += [f"import loop among: {', '.join(group)}" for group in loops(edges)]
    return found


def loops(edges: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that reach each other (strongly connected, Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def test_the_engine_imports_one_way_and_nothing_loops():
    assert problems(ROOT) == []


def test_the_check_finds_a_loop_an_upward_import_and_an_adapter_import(tmp_path):
    """The test of the test: a tree with each fault, and each is found."""
    files = {
        "sd_ov/__init__.py": "",
        "sd_ov/errors.py": "",
        "sd_ov/store/__init__.py": "",
        "sd_ov/store/cache.py": "from . import lock\nfrom ..runtime import compiled\n",
        "sd_ov/store/lock.py": "def f():\n    from .cache import x\n",
        "sd_ov/runtime/__init__.py": "",
        "sd_ov/runtime/compiled.py": "from ..errors import E\n",
        "sd_ov_webui/__init__.py": "",
        "sd_ov_webui/unet.py": "from sd_ov import ServedUNet\nfrom sd_ov.store.cache import CacheEntry\n",
        "scripts/s.py": "import sd_ov\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    found = problems(tmp_path)
    assert found == [
        "sd_ov.store.cache imports sd_ov.runtime.compiled: up the layers (store < runtime)",
        "sd_ov_webui.unet imports sd_ov.store.cache: the adapter uses the public API (`sd_ov`) only",
        "import loop among: sd_ov.store.cache, sd_ov.store.lock",
    ], found
