"""The package's shape, read from its source: layers point one way and no module imports itself back.

Every ``import`` and ``from ... import`` in ``src/bestckpt`` counts, including those inside functions
(a lazy import is still a dependency). Layers, lowest first; a module may import its own layer's
package and any lower layer, never a higher one, and the packages sharing a layer are independent.
"""
from __future__ import annotations

import ast
from pathlib import Path

import bestckpt

SRC = Path(bestckpt.__file__).resolve().parent

LAYERS: list[tuple[str, ...]] = [
    ("bestckpt.errors", "bestckpt.fsio"),       # foundations: the exception root, publishing files
    ("bestckpt.tracking", "bestckpt.metrics"),  # torch-free bookkeeping; pure metric functions
    ("bestckpt.backbones",),                    # feature extractors, weight resolution
    ("bestckpt.evaluation",),                   # protocol, sampler contract, scorer, one evaluation
    ("bestckpt.sinks",),                        # TensorBoard, HTML report
    ("bestckpt.runners",),                      # inline, background worker, sidecar
    ("bestckpt.integrations",),                 # training-loop helpers
    ("bestckpt.testing", "bestckpt.demo"),      # random test networks; the demo (its evaluators, model, script)
    ("bestckpt.cli",),                          # the command line
    ("bestckpt.__main__",),                     # python -m bestckpt
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Names of bestckpt modules that ``path`` imports anywhere in its body."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)  # `from pkg import module`
    return {name for name in found if name == "bestckpt" or name.startswith("bestckpt.")}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        # `from bestckpt import fsio` depends on bestckpt.fsio, not on the root package: the root is a lazy
        # facade (its imports of the tracker run only for type checkers), so edges to it are not followed.
        edges[name] = {t for t in imports_of(path) if t in modules and t not in (name, "bestckpt")}
    return edges


def layer_of(module: str) -> int | None:
    for i, packages in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in packages):
            return i
    return None


def top_package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(m for m in graph() if m != "bestckpt" and layer_of(m) is None)
    assert unplaced == [], f"place these modules in LAYERS: {unplaced}"


def test_no_import_points_up_or_sideways() -> None:
    bad = []
    for src, targets in graph().items():
        ls = layer_of(src)
        if ls is None:
            continue
        for dst in targets:
            ld = layer_of(dst)
            if dst == "bestckpt" or ld is None:
                continue
            if ld > ls or (ld == ls and top_package(dst) != top_package(src)):
                bad.append(f"{src} -> {dst}")
    assert bad == [], "imports against the layering:\n" + "\n".join(sorted(bad))


def test_no_import_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif state.get(nxt) is None:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if state.get(node) is None:
            visit(node)
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_tracking_core_imports_no_torch() -> None:
    heavy = ("torch", "numpy", "PIL", "tensorboard", "rich")
    offenders = []
    for path in (SRC / "tracking").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{module_name(path)}: {n}" for n in names if n.split(".")[0] in heavy]
    assert offenders == []
