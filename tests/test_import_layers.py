"""The package's layers import one way: `models`, `latent` and `data` never reach up into training, evaluation,
batch jobs, the pipeline or the CLI. Checked by walking every module's import statements (AST, no execution)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lostcli"
LOWER = ("models", "latent", "data", "config", "errors")
UPPER = ("train", "eval", "batch", "bench", "pipeline", "cli", "demo")


def _top(module: str) -> str | None:
    """'lostcli.eval.recon' -> 'eval'; None outside the package."""
    parts = module.split(".")
    return parts[1] if parts[0] == "lostcli" and len(parts) > 1 else None


def _imports(path: Path) -> set[str]:
    """Absolute module names imported by one file (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                found.add(".".join(base + ([node.module] if node.module else [])))
            else:
                found.add(node.module or "")
    return found


def layer_edges() -> dict[str, set[str]]:
    """{top-level package or module: the other top-level ones it imports}."""
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        source = rel.parts[0].removesuffix(".py")
        targets = {_top(m) for m in _imports(path)} - {None, source}
        edges.setdefault(source, set()).update(targets)
    return edges


def test_the_walker_sees_known_imports():
    edges = layer_edges()
    assert "models" in edges["train"] and "data" in edges["cli"]  # the walker itself can fail
    assert "errors" in edges["models"]


def test_lower_layers_never_import_upper_ones():
    edges = layer_edges()
    wrong = {(low, up) for low in LOWER for up in edges.get(low, ()) if up in UPPER}
    assert not wrong, f"imports that run upwards: {sorted(wrong)}"
