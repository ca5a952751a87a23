"""Prompt files: held-out evaluation prompts (and paired reference images) in .txt, .csv or .json.

:func:`load_prompt_file` is what a protocol's ``prompts_file`` goes through; the CSV layout is the
guide's (``image_path,text_en``), so its evaluation CSVs load unchanged.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from bestckpt.errors import ProtocolError

__all__ = ["CSV_IMAGE_COLUMN", "CSV_PROMPT_COLUMN", "load_prompt_file"]

# the guide's CSV columns
CSV_PROMPT_COLUMN = "text_en"
CSV_IMAGE_COLUMN = "image_path"


def load_prompt_file(path: str | Path) -> tuple[tuple[str, ...], tuple[Path | None, ...]]:
    """Read prompts (and paired reference image paths, when the format has them).

    ``.txt``: one prompt per line, blank lines skipped. ``.csv``: the guide's columns
    ``image_path,text_en`` (``image_path`` may be empty for a row without reference). ``.json``:
    a list of strings, or of objects ``{"text": ..., "image_path": ...}`` (``text_en``/``prompt``
    accepted for ``text``). Relative image paths are relative to the prompt file's folder.
    Returns ``(prompts, reference_paths)`` with one entry per prompt (``None``: no reference).
    """
    path = Path(path)
    if not path.is_file():
        raise ProtocolError(f"prompt file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    readers = {".txt": _read_txt, ".csv": _read_csv, ".json": _read_json}
    if suffix not in readers:
        raise ProtocolError(f"prompt file {str(path)!r} has suffix {suffix!r}; expected .txt, .csv or .json")
    pairs = readers[suffix](path)
    if not pairs:
        raise ProtocolError(f"prompt file {str(path)!r} contains no prompts")
    return tuple(p for p, _ in pairs), tuple(r for _, r in pairs)


def _ref_of(base: Path, value: Any) -> Path | None:
    """A reference image path from a file's field: None when empty, relative to ``base`` unless absolute."""
    if value is None or str(value).strip() == "":
        return None
    p = Path(str(value).strip())
    return p if p.is_absolute() else base / p


def _read_txt(path: Path) -> list[tuple[str, Path | None]]:
    return [(line.strip(), None) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _read_csv(path: Path) -> list[tuple[str, Path | None]]:
    pairs: list[tuple[str, Path | None]] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        found = [c.strip() for c in (reader.fieldnames or [])]
        if CSV_PROMPT_COLUMN not in found:
            raise ProtocolError(
                f"prompt CSV {str(path)!r} has columns {found}; expected columns "
                f"{[CSV_IMAGE_COLUMN, CSV_PROMPT_COLUMN]} ('{CSV_IMAGE_COLUMN}' may be empty per row)"
            )
        for row in reader:
            row = {(k or "").strip(): v for k, v in row.items()}
            text = (row.get(CSV_PROMPT_COLUMN) or "").strip()
            if text:
                pairs.append((text, _ref_of(path.parent, row.get(CSV_IMAGE_COLUMN))))
    return pairs


def _read_json(path: Path) -> list[tuple[str, Path | None]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"prompt file {str(path)!r} is not valid JSON: {exc}") from exc
    if isinstance(data, dict) and "prompts" in data:
        data = data["prompts"]
    if not isinstance(data, list):
        raise ProtocolError(f"prompt JSON {str(path)!r} must be a list of strings or of objects with 'text'")
    pairs: list[tuple[str, Path | None]] = []
    for i, item in enumerate(data):
        if isinstance(item, str):
            pairs.append((item.strip(), None))
        elif isinstance(item, dict):
            text = item.get("text", item.get("text_en", item.get("prompt")))
            if not isinstance(text, str) or not text.strip():
                raise ProtocolError(
                    f"prompt JSON {str(path)!r} item {i} has keys {sorted(item)}; expected 'text' "
                    "(or 'text_en'/'prompt') and optionally 'image_path'"
                )
            pairs.append((text.strip(), _ref_of(path.parent, item.get("image_path"))))
        else:
            raise ProtocolError(f"prompt JSON {str(path)!r} item {i} is a {type(item).__name__}")
    return pairs
