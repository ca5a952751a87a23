"""Small modules with one role, short functions: the limits the redesign set, kept by a test.

A module may have at most 450 lines (aim for 400); a function or method at most 80 lines. The one
exception is the demo's ``train.py:main``, which reads top to bottom like DiT's training script.
"""
from __future__ import annotations

import ast
from pathlib import Path

import bestckpt

SRC = Path(bestckpt.__file__).resolve().parent
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80
EXEMPT_FUNCTIONS = {"demo/train.py:main"}


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_modules_are_small() -> None:
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert long == {}, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_functions_are_short() -> None:
    long = {}
    for path in SRC.rglob("*.py"):
        rel = str(path.relative_to(SRC))
        for fn in _functions(ast.parse(path.read_text(encoding="utf-8"))):
            n = fn.end_lineno - fn.lineno + 1  # type: ignore[operator]
            if n > MAX_FUNCTION_LINES and f"{rel}:{fn.name}" not in EXEMPT_FUNCTIONS:
                long[f"{rel}:{fn.name}"] = n
    assert long == {}, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
