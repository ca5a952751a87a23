"""No test depends on timing: a test of the suite itself, over every ``tests/**/*.py`` (ast, no import).

Rejected:

(a) sleep-polling for files: a ``time.sleep`` inside a ``while``/``for`` loop whose condition or
    body checks a path (``.exists()``, ``.is_file()``, ``.is_dir()``, ``os.path.exists/isfile/
    isdir/lexists``). A file appearing says nothing about the state it belongs to (it exists before
    it is registered); wait for the event instead (``tests/support/waiting.py``).
(b) duration asserts: an ``assert`` (or ``assertLess``-style call) comparing with ``<``, ``<=``,
    ``>``, ``>=`` a value computed from a clock (``time.monotonic()``, ``time.time()``,
    ``time.perf_counter()`` and their ``_ns`` forms), directly or through variables assigned from
    one. How long something takes is a benchmark figure (``bench/``), not a test outcome.
(c) home-made deadline loops: a loop that sleeps and reads a clock. Waiting for recorded state goes
    through the one helper that may do this, ``waiting.wait_for_state`` (allowed below).

Sleeps that stand for work (a slow sampler, a trainer's step) are fine: they wait for nothing.
"""
from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
ALLOWED = {"support/waiting.py"}  # the one bounded polling helper of the suite

CLOCKS = {"monotonic", "time", "perf_counter", "monotonic_ns", "time_ns", "perf_counter_ns"}
PATH_CHECKS = {"exists", "is_file", "is_dir"}
OS_PATH_CHECKS = {"exists", "isfile", "isdir", "lexists"}
ORDERINGS = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)
UNITTEST_ORDERINGS = {"assertLess", "assertLessEqual", "assertGreater", "assertGreaterEqual"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


class _Imports:
    """Which bare names stand for ``time.sleep`` / a clock (``from time import sleep, monotonic``)."""

    def __init__(self, tree: ast.AST) -> None:
        self.sleep: set[str] = set()
        self.clocks: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "time":
                for alias in node.names:
                    name = alias.asname or alias.name
                    if alias.name == "sleep":
                        self.sleep.add(name)
                    elif alias.name in CLOCKS:
                        self.clocks.add(name)

    def is_sleep(self, node: ast.AST) -> bool:
        return isinstance(node, ast.Call) and (_dotted(node.func) == "time.sleep" or _dotted(node.func) in self.sleep)

    def is_clock(self, node: ast.AST) -> bool:
        if not isinstance(node, ast.Call):
            return False
        name = _dotted(node.func)
        return (name.startswith("time.") and name[5:] in CLOCKS) or name in self.clocks


def _is_path_check(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    name = _dotted(node.func)
    if name.startswith("os.path.") and name[8:] in OS_PATH_CHECKS:
        return True
    return isinstance(node.func, ast.Attribute) and node.func.attr in PATH_CHECKS and not name.startswith("os.path.")


def _scopes(tree: ast.AST):
    yield tree
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield node


def _target_names(target: ast.AST) -> list[str]:
    """Names an assignment target binds: ``x``, ``self.t0``, ``times`` (of ``times[i] = ...``)."""
    if isinstance(target, (ast.Name, ast.Attribute)):
        return [_dotted(target)]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [n for elt in target.elts for n in _target_names(elt)]
    if isinstance(target, (ast.Starred, ast.Subscript)):
        return _target_names(target.value)
    return []


def _mentions(expr: ast.AST | None, names: set[str], imports: _Imports) -> bool:
    """Whether ``expr`` reads a clock or one of ``names``."""
    return expr is not None and any(
        imports.is_clock(n) or (isinstance(n, (ast.Name, ast.Attribute)) and _dotted(n) in names)
        for n in ast.walk(expr))


def _tainted(scope: ast.AST, imports: _Imports) -> set[str]:
    """Names holding clock readings or values computed from them, in ``scope`` (to a fixpoint)."""
    tainted: set[str] = set()
    changed = True
    while changed:
        changed = False
        for node in ast.walk(scope):
            targets: list[ast.AST] = []
            if isinstance(node, ast.Assign) and _mentions(node.value, tainted, imports):
                targets = node.targets
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign, ast.NamedExpr)) and _mentions(node.value, tainted, imports):
                targets = [node.target]
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr in ("append", "extend", "add")
                  and any(_mentions(a, tainted, imports) for a in node.args)):
                targets = [node.func.value]  # durations.append(time.perf_counter() - t0)
            for name in (n for t in targets for n in _target_names(t)):
                if name and name not in tainted:
                    tainted.add(name)
                    changed = True
    return tainted


def violations(source: str, filename: str = "<snippet>") -> list[str]:
    """Every timing dependence in ``source`` (see the module docstring), as ``file:line: what``."""
    tree = ast.parse(source, filename)
    imports = _Imports(tree)
    found: list[str] = []
    for loop in ast.walk(tree):
        if not isinstance(loop, (ast.While, ast.For, ast.AsyncFor)):
            continue
        sleeps = [n for n in ast.walk(loop) if imports.is_sleep(n)]
        if not sleeps:
            continue
        if any(_is_path_check(n) for n in ast.walk(loop)):
            found.append(f"{filename}:{loop.lineno}: sleep-polling for a file (wait for an event or recorded state)")
        elif any(imports.is_clock(n) for n in ast.walk(loop)):
            found.append(f"{filename}:{loop.lineno}: a deadline loop that sleeps (use waiting.wait_for_state)")
    for scope in _scopes(tree):
        tainted = _tainted(scope, imports)
        for node in ast.walk(scope):
            compared: list[ast.AST] = []
            if isinstance(node, ast.Assert):
                compared = [c for c in ast.walk(node.test)
                            if isinstance(c, ast.Compare) and any(isinstance(op, ORDERINGS) for op in c.ops)]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in UNITTEST_ORDERINGS:
                compared = [node]
            if any(_mentions(c, tainted, imports) for c in compared):
                found.append(f"{filename}:{node.lineno}: asserts a duration (timing is a benchmark figure)")
    return list(dict.fromkeys(found))  # a nested function is walked with its parent too: once each


# ------------------------------------------------------------------------------------------ the suite
def test_no_test_depends_on_timing() -> None:
    found: list[str] = []
    for path in sorted(TESTS.rglob("*.py")):
        rel = path.relative_to(TESTS).as_posix()
        if rel in ALLOWED:
            continue
        found += violations(path.read_text(encoding="utf-8"), f"tests/{rel}")
    assert found == [], "tests that depend on timing:\n" + "\n".join(found)


# ------------------------------------------------------------------------------------------ the checker
BAD = {
    "poll for a path": """
        import time
        def test_x(p):
            while not p.exists():
                time.sleep(0.1)
        """,
    "poll with os.path and a deadline": """
        import os, time
        def test_x(p):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if os.path.isfile(p):
                    break
                time.sleep(0.05)
        """,
    "poll in a for loop, sleep imported by name": """
        from time import sleep
        def test_x(d):
            for _ in range(100):
                if (d / "done").is_dir():
                    break
                sleep(0.1)
        """,
    "deadline loop without a path": """
        import time
        def wait_for(pred, timeout):
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                if pred():
                    return
                time.sleep(0.1)
        """,
    "duration assert, direct": """
        import time
        def test_x(lock):
            t0 = time.monotonic()
            lock.acquire()
            assert time.monotonic() - t0 < 5
        """,
    "duration assert through variables": """
        import time
        def test_x(run):
            t1 = time.perf_counter()
            run()
            sync = time.perf_counter() - t1
            ratio = sync / 2
            assert ratio >= 0.3
        """,
    "duration assert through a list": """
        from time import perf_counter as clock
        def test_x(run):
            blocked = []
            for _ in range(3):
                t0 = clock()
                run()
                blocked.append(clock() - t0)
            assert max(blocked) < 0.5
        """,
    "unittest-style duration assert": """
        import time
        class T:
            def test_x(self):
                start = time.time()
                self.assertLess(time.time() - start, 1.0)
        """,
}

GOOD = {
    "wait for recorded state": """
        from waiting import wait_for_state
        def test_x(tracker):
            wait_for_state(lambda: tracker.pending_steps(), lambda p: p == [], what="no pending step")
        """,
    "a sleep that stands for work": """
        import time
        def train(n, path):
            for step in range(n):
                path.write_bytes(b"x")
                time.sleep(0.5)
        """,
    "path checks without sleeping": """
        import os
        def test_x(paths):
            for p in paths:
                assert p.exists() and os.path.isfile(p)
        """,
    "clock read for a message only": """
        import time
        def test_x(run):
            t0 = time.perf_counter()
            n = run()
            print(f"took {time.perf_counter() - t0:.2f} s")
            assert n >= 3
        """,
    "equality with a recorded timestamp": """
        def test_x(tracker, first):
            assert tracker.records[0].time == first
        """,
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_the_checker_flags_known_bad_snippets(name: str) -> None:
    assert violations(textwrap.dedent(BAD[name])), name


@pytest.mark.parametrize("name", sorted(GOOD))
def test_the_checker_passes_good_snippets(name: str) -> None:
    assert violations(textwrap.dedent(GOOD[name])) == [], name


def test_the_checker_flags_what_this_suite_used_to_do() -> None:
    """The patterns removed from tests/runners and tests/tracking (issue 9), as they were written."""
    old_runner = """
        import time
        def test_killed(mark, runner):
            deadline = time.monotonic() + 120
            while not mark.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        """
    old_lock = """
        import time
        from bestckpt.tracking import locking
        def test_lock(tmp_path):
            t0 = time.monotonic()
            with locking.lock(tmp_path, timeout=5):
                pass
            assert time.monotonic() - t0 < 5
        """
    assert [v.split(": ", 1)[1] for v in violations(textwrap.dedent(old_runner))] == [
        "sleep-polling for a file (wait for an event or recorded state)"]
    assert [v.split(": ", 1)[1] for v in violations(textwrap.dedent(old_lock))] == [
        "asserts a duration (timing is a benchmark figure)"]
