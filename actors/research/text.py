"""Turning an ingested file into searchable text: text and Markdown as they are, HTML and PDF as their text."""

from __future__ import annotations

import base64
import binascii
import io
from html.parser import HTMLParser

from pypdf import PdfReader
from pypdf.errors import FileNotDecryptedError

__all__ = ["SUPPORTED", "UnreadableDocument", "UnsupportedType", "pdf_to_text", "to_text"]

SUPPORTED = ("text/plain", "text/markdown", "text/html", "application/pdf")
SKIPPED_TAGS = {"script", "style", "head", "noscript", "template"}
BLOCK_TAGS = {"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "section", "article", "pre"}


class UnsupportedType(ValueError):
    pass


class UnreadableDocument(UnsupportedType):
    """A supported type whose content cannot be read (a damaged or encrypted PDF, bad base64)."""


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


def pdf_to_text(data: bytes) -> str:
    """Every page's text, pages separated by a blank line; UnreadableDocument if the PDF cannot be read."""
    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() for page in reader.pages]
    except FileNotDecryptedError:
        raise UnreadableDocument("the PDF is encrypted: send it without a password") from None
    except Exception as e:  # pypdf raises many kinds of error on a damaged file
        raise UnreadableDocument(f"the PDF cannot be read: {e}") from None
    return "\n\n".join(text.strip() for text in pages if text.strip())


def to_text(content: str, content_type: str) -> str:
    """The searchable text of `content`. PDF arrives base64-encoded, because bus messages carry text."""
    kind = content_type.split(";")[0].strip().lower()
    if kind in ("text/plain", "text/markdown", "text/x-markdown"):
        return content
    if kind == "text/html":
        parser = _Text()
        parser.feed(content)
        parser.close()
        lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
        return "\n".join(line for line in lines if line)
    if kind == "application/pdf":
        try:
            data = base64.b64decode(content, validate=True)
        except binascii.Error:
            raise UnreadableDocument("application/pdf content must be the PDF's bytes, base64-encoded") from None
        return pdf_to_text(data)
    raise UnsupportedType(f"{kind} is not supported: send one of {', '.join(SUPPORTED)}")
