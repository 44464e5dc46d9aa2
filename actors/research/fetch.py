"""Fetching a web page as a research source: every hop checked against the outbound rules, the body bounded.

Every connection goes to an address checked against the outbound rules (actors/_outbound_http.py:
resolved once, checked, connected to, so DNS rebinding cannot point it inward). Redirects are
followed by hand (at most MAX_REDIRECTS), each target's URL checked again and fetched over its own
checked connection, so a public URL cannot bounce to an internal address either. Errors are
FetchError, with a message a model can act on.
"""

from __future__ import annotations

import asyncio
import html
import re
from dataclasses import dataclass

import httpx

from actors._outbound import Allowlist, UnsafeURL, check_url_syntax
from actors._outbound_http import http_client
from actors.research.text import UnreadableDocument, pdf_to_text, to_text

__all__ = ["FetchError", "FetchedPage", "fetch_text"]

MAX_REDIRECTS = 3
HTML_TYPES = ("text/html", "application/xhtml+xml")
TEXT_TYPES = ("text/plain", "text/markdown", "text/x-markdown")
PDF = "application/pdf"
HEADERS = {"user-agent": "agentbus-research", "accept": "text/html, text/plain, text/markdown, application/pdf"}
TITLE = re.compile(r"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)


class FetchError(ValueError):
    """The page cannot be fetched or read; the message says why."""


@dataclass(frozen=True, slots=True)
class FetchedPage:
    url: str  # after redirects
    status_code: int
    content_type: str  # without parameters: text/html, text/plain, text/markdown or application/pdf
    title: str  # the HTML <title>, else the URL
    text: str
    truncated: bool  # the body was longer than max_bytes and was cut there


async def fetch_text(url: str, *, allow: Allowlist, max_bytes: int, timeout_s: float) -> FetchedPage:
    """GET `url` (following up to MAX_REDIRECTS redirects) as text; at most `max_bytes` of body, `timeout_s` in all."""
    try:
        async with asyncio.timeout(timeout_s), http_client(allow, timeout=timeout_s, follow_redirects=False) as client:
            return await _fetch(client, url, max_bytes)
    except TimeoutError:
        raise FetchError(f"{url} did not answer within {timeout_s:g} seconds") from None


async def _fetch(client: httpx.AsyncClient, url: str, max_bytes: int) -> FetchedPage:
    for _ in range(MAX_REDIRECTS + 1):
        try:
            check_url_syntax(url)
        except UnsafeURL as e:
            raise FetchError(f"refusing to fetch {url}: {e}") from None
        except ValueError:  # urlsplit: an unclosed IPv6 bracket, a port that is not a number
            raise FetchError(f"not a URL: {url}") from None
        try:
            async with client.stream("GET", url, headers=HEADERS) as response:
                if response.is_redirect:
                    url = str(response.url.join(response.headers["location"]))
                    continue
                if not response.is_success:
                    raise FetchError(f"{url} answered {response.status_code} {response.reason_phrase}".rstrip())
                kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
                if kind not in (*HTML_TYPES, *TEXT_TYPES, PDF):
                    raise FetchError(
                        f"{url} is {kind or 'of no declared type'}: only HTML, plain text, Markdown and PDF can be read"
                    )
                body, truncated = await _read(response, max_bytes)
                charset = response.charset_encoding or "utf-8"
        except UnsafeURL as e:  # from the connection: what the name resolved to is internal
            raise FetchError(f"refusing to fetch {url}: {e}") from None
        except (httpx.HTTPError, httpx.InvalidURL) as e:
            raise FetchError(f"cannot fetch {url}: {e or type(e).__name__}") from None
        return _page(url, response.status_code, kind, body, charset, truncated, max_bytes)
    raise FetchError(f"too many redirects: {url} is more than {MAX_REDIRECTS} redirects away")


async def _read(response: httpx.Response, max_bytes: int) -> tuple[bytes, bool]:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > max_bytes:
            return bytes(body[:max_bytes]), True
    return bytes(body), False


def _page(url: str, status: int, kind: str, body: bytes, charset: str, truncated: bool, max_bytes: int) -> FetchedPage:
    title = url
    if kind == PDF:
        if truncated:
            raise FetchError(f"{url} is a PDF larger than {max_bytes} bytes: it cannot be read in part")
        try:
            text = pdf_to_text(body)
        except UnreadableDocument as e:
            raise FetchError(f"{url}: {e}") from None
        return FetchedPage(url, status, kind, title, text, truncated)
    try:
        decoded = body.decode(charset, errors="replace")
    except LookupError:  # an unknown charset
        decoded = body.decode("utf-8", errors="replace")
    if kind in HTML_TYPES:
        if found := TITLE.search(decoded):
            title = " ".join(html.unescape(found.group(1)).split()) or url
        return FetchedPage(url, status, "text/html", title, to_text(decoded, "text/html"), truncated)
    return FetchedPage(
        url, status, "text/plain" if kind == "text/plain" else "text/markdown", title, decoded, truncated
    )
