#!/usr/bin/env python
"""Print (or, with ``--write``, rewrite in place) the public-API table of tests/architecture/test_public_api.py.

    PYTHONPATH=src python scripts/public_api.py           # print the table generated from the source
    PYTHONPATH=src python scripts/public_api.py --write   # replace the table in the test file

Run it after changing the public API on purpose; the diff of the test file is the API change to review.
"""
from __future__ import annotations

import argparse
import importlib.util
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_FILE = ROOT / "tests" / "architecture" / "test_public_api.py"
BEGIN, END = "# BEGIN GENERATED TABLE (scripts/public_api.py --write)\n", "# END GENERATED TABLE\n"
LINE_LENGTH = 120


def current_api() -> dict[str, list[str]]:
    """The table as the source defines it now (the collector is the test's own, so both agree)."""
    spec = importlib.util.spec_from_file_location("_public_api_test", TEST_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.current_api()


def render(api: dict[str, list[str]]) -> str:
    """``EXPECTED = {...}`` as Python source, one module per entry, names wrapped at the line length."""
    lines = ["EXPECTED: dict[str, list[str]] = {"]
    for module, names in api.items():
        items = ", ".join(f'"{n}"' for n in names)
        one_line = f'    "{module}": [{items}],'
        if len(one_line) <= LINE_LENGTH:
            lines.append(one_line)
            continue
        lines.append(f'    "{module}": [')
        lines += textwrap.wrap(items, LINE_LENGTH - 8, initial_indent=" " * 8, subsequent_indent=" " * 8,
                               break_on_hyphens=False, break_long_words=False)
        lines[-1] += ","
        lines.append("    ],")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"rewrite the table in {TEST_FILE.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    table = render(current_api())
    if not args.write:
        sys.stdout.write(table)
        return 0
    text = TEST_FILE.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        print(f"error: markers {BEGIN.strip()!r} ... {END.strip()!r} not found in {TEST_FILE}", file=sys.stderr)
        return 1
    TEST_FILE.write_text(pattern.sub(lambda _: BEGIN + table + END, text, count=1), encoding="utf-8")
    print(f"rewrote the public-API table in {TEST_FILE.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
