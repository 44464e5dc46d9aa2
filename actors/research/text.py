"""Turning an ingested file into searchable text: plain text and Markdown as they are, HTML as its text."""

from __future__ import annotations

from html.parser import HTMLParser

__all__ = ["SUPPORTED", "UnsupportedType", "to_text"]

SUPPORTED = ("text/plain", "text/markdown", "text/html")
SKIPPED_TAGS = {"script", "style", "head", "noscript", "template"}
BLOCK_TAGS = {"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "section", "article", "pre"}


class UnsupportedType(ValueError):
    pass


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in SKIPPED_TAGS:
            self._skipping += 1
        elif tag in BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in SKIPPED_TAGS and self._skipping:
            self._skipping -= 1
        elif tag in BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def to_text(content: str, content_type: str) -> str:
    kind = content_type.split(";")[0].strip().lower()
    if kind in ("text/plain", "text/markdown", "text/x-markdown"):
        return content
    if kind == "text/html":
        parser = _Text()
        parser.feed(content)
        parser.close()
        lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
        return "\n".join(line for line in lines if line)
    raise UnsupportedType(f"{kind} is not supported: send one of {', '.join(SUPPORTED)}")
