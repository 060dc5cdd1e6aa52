"""Reading HTML in tests: what tags and attributes a page or a rendered card holds."""

from __future__ import annotations

from html.parser import HTMLParser


class HtmlTags(HTMLParser):
    """Every tag name and attribute of an HTML fragment (attribute names and values lowered)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()
        self.attributes: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.names.add(tag)
        self.attributes += [(k.lower(), (v or "").strip().lower()) for k, v in attrs]
