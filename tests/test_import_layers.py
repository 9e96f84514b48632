"""The package's layers import one way (README, "Code layout"): `models`, `latent` and `data` never reach up into
training, evaluation, batch jobs, the pipeline or the CLI; training and evaluation / the pipeline never import each
other; every top-level package or module has a place in `LAYERS` and imports only from layers below it, so the
package-level import graph has no cycle. Checked by walking every module's import statements, those inside
functions included (AST, no execution)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lostcli"
LOWER = ("models", "latent", "data", "config", "errors")
UPPER = ("train", "eval", "batch", "bench", "pipeline", "cli", "demo", "web")
# Bottom to top. A top-level package or module imports only from layers strictly below its own.
# The README's "Code layout" table lists the same rows (without the package root, the shim and __main__).
LAYERS = (
    ("__init__", "errors"),  # the package root, the exception types
    ("config",),  # dataclass configs from YAML
    ("persist", "weights", "_torchvision_shim"),  # atomic writes and model folders, where weights are, a shim
    ("data", "latent"),  # dataset store, meshes, renders | shape VAEs and their checkpoints
    ("models",),  # networks (tensors in, tensors out) and their folders
    ("teachers", "bundle", "image3d"),  # teachers and text encoders by spec | the bundle folder | image to 3D
    ("train", "pipeline"),  # training stages | the inference pipeline over an exported bundle
    ("eval", "batch"),  # metrics and reports | jobs over every item of a dataset store
    ("bench", "demo", "web"),  # speed and memory benchmarks | the end-to-end demo | the web app
    ("cli",),  # the `lost` command
    ("__main__",),  # python -m lostcli
)
NOT_IN_README = {"__init__", "_torchvision_shim", "__main__"}
APART = {("train", "eval"), ("train", "pipeline"), ("eval", "train"), ("pipeline", "train")}  # never either way


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
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            found.add(origin)
            found.update(f"{origin}.{alias.name}" for alias in node.names)  # `from lostcli import pipeline`
    return found


def _top_levels() -> set[str]:
    """Names of the package's top-level subpackages and modules ('eval', 'pipeline', '__init__', ...)."""
    return {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} | {
        p.stem for p in PACKAGE.glob("*.py")}


def layer_edges() -> dict[str, set[str]]:
    """{top-level package or module: the other top-level ones it imports}."""
    edges: dict[str, set[str]] = {}
    tops = _top_levels()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        source = rel.parts[0].removesuffix(".py")
        targets = {_top(m) for m in _imports(path)} & tops - {source}  # names like __version__ drop out
        edges.setdefault(source, set()).update(targets)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_walker_sees_known_imports():
    edges = layer_edges()
    assert "models" in edges["train"] and "data" in edges["cli"]  # the walker itself can fail
    assert "errors" in edges["models"]


def test_lower_layers_never_import_upper_ones():
    edges = layer_edges()
    wrong = {(low, up) for low in LOWER for up in edges.get(low, ()) if up in UPPER}
    assert not wrong, f"imports that run upwards: {sorted(wrong)}"


def test_the_walker_sees_lazy_and_package_level_imports():
    """Imports inside functions count, and so does `from lostcli import name` / `from .. import name`."""
    edges = layer_edges()
    assert "demo" in edges["cli"]  # cli/demo.py imports ..demo inside a function
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_training_and_evaluation_or_pipeline_never_import_each_other():
    edges = layer_edges()
    wrong = {(a, b) for a, b in APART if b in edges.get(a, ())}
    assert not wrong, f"imports between train and eval/pipeline: {sorted(wrong)}"


def test_package_level_import_graph_has_no_cycle():
    cycle = find_cycle(layer_edges())
    assert cycle is None, f"import cycle between top-level packages: {' -> '.join(cycle)}"


def test_every_import_goes_to_a_lower_layer():
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    edges = layer_edges()
    unplaced = sorted(set(edges) - set(rank))
    assert not unplaced, f"top-level packages/modules with no layer in LAYERS (README, Code layout): {unplaced}"
    wrong = sorted((a, b) for a, targets in edges.items() for b in targets if rank[b] >= rank[a])
    assert not wrong, f"imports that do not go to a lower layer (LAYERS): {wrong}"


def test_readme_code_layout_lists_the_layers():
    text = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    section = text.split("## Code layout", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[2] for line in section.splitlines() if line.startswith("| ") and line[2].isdigit()]
    readme = [tuple(name for name in row.replace("`", "").replace(",", " ").split()) for row in rows]
    want = [tuple(n for n in layer if n not in NOT_IN_README) for layer in LAYERS]
    assert readme == [layer for layer in want if layer], "README's Code layout table differs from LAYERS"
