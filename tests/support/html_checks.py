"""Checks of generated HTML: every image decodes or names an existing file, nothing remote."""
from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict[str, str | None]] = []
        self.tags: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        if tag in ("a", "link", "script") and (a.get("href") or a.get("src")):
            self.links.append(str(a.get("href") or a.get("src")))


def check_images(html_text: str, base: Path) -> _Collector:
    """Every <img> decodes to a real image (data URI) or names an existing file; no remote links."""
    from PIL import Image

    c = _Collector()
    c.feed(html_text)
    for img in c.imgs:
        src = str(img.get("src"))
        if src.startswith("data:"):
            head, _, payload = src.partition(",")
            assert head.endswith(";base64"), head
            with Image.open(io.BytesIO(base64.b64decode(payload))) as im:
                im.load()
                assert im.width > 0 and im.height > 0
        else:
            assert not re.match(r"^[a-z]+://", src), f"remote image {src}"
            assert (base / src).is_file(), f"broken image link {src}"
    for link in c.links:
        assert link.startswith("data:") or not re.match(r"^[a-z]+://", link), f"external resource {link}"
    return c
