"""Fetching a URL as a research source, against real HTTP servers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from fpdf import FPDF

from actors._outbound import Allowlist
from actors.research.fetch import FetchedPage, FetchError, fetch_text

LOOPBACK = Allowlist.parse("127.0.0.1")
PAGE = b"""<html><head><title>The  Analytical &amp; Engine</title><style>p {}</style></head>
<body><h1>Engine</h1><p>Babbage designed it.</p></body></html>"""

Route = tuple[int, dict[str, str], bytes]


class Site:
    """A minimal HTTP/1.1 server on loopback: each path answers its route, anything else 404."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            path = (await reader.readline()).split()[1].decode()
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            status, headers, body = self.routes.get(path, (404, {"content-type": "text/plain"}, b"not here"))
            head = "".join(f"{k}: {v}\r\n" for k, v in {**headers, "content-length": str(len(body))}.items())
            writer.write(f"HTTP/1.1 {status} Status\r\n{head}connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except ConnectionError:
            pass  # the client stopped reading (a truncated body)
        finally:
            writer.close()

    async def __aenter__(self) -> Site:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        self._server.close()


def html(body: bytes) -> Route:
    return 200, {"content-type": "text/html; charset=utf-8"}, body


def redirect(location: str) -> Route:
    return 302, {"location": location}, b""


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    made = FPDF()
    made.set_font("helvetica", size=12)
    made.add_page()
    made.multi_cell(0, 10, "The mill did the arithmetic.")
    routes = {
        "/page": html(PAGE),
        "/notes.md": (200, {"content-type": "text/markdown"}, "# Notes\n\nCafé.".encode()),
        "/paper.pdf": (200, {"content-type": "application/pdf"}, bytes(made.output())),
        "/big": (200, {"content-type": "text/plain"}, b"x" * 200_000),
        "/binary": (200, {"content-type": "application/octet-stream"}, b"\x00\x01"),
        "/moved": redirect("/page"),
        "/inward": redirect("http://169.254.169.254/latest/meta-data/"),
        "/loop": redirect("/loop"),
        "/broken": (500, {"content-type": "text/plain"}, b"oops"),
    }
    async with Site(routes) as started:
        yield started


async def fetch(url: str, *, allow: Allowlist = LOOPBACK, max_bytes: int = 1_000_000) -> FetchedPage:
    return await fetch_text(url, allow=allow, max_bytes=max_bytes, timeout_s=5)


async def test_an_html_page_is_fetched_as_its_text_and_title(site: Site) -> None:
    page = await fetch(site.url("/page"))
    assert (page.status_code, page.content_type, page.truncated) == (200, "text/html", False)
    assert page.title == "The Analytical & Engine"
    assert page.text == "Engine\nBabbage designed it."

    notes = await fetch(site.url("/notes.md"))
    assert (notes.content_type, notes.title, notes.text) == ("text/markdown", site.url("/notes.md"), "# Notes\n\nCafé.")
    paper = await fetch(site.url("/paper.pdf"))
    assert (paper.content_type, paper.text) == ("application/pdf", "The mill did the arithmetic.")


async def test_a_redirect_is_followed_and_rechecked(site: Site) -> None:
    moved = await fetch(site.url("/moved"))
    assert moved.url == site.url("/page") and moved.title == "The Analytical & Engine"
    with pytest.raises(FetchError, match=r"169\.254\.169\.254.*private or internal address"):
        await fetch(site.url("/inward"))
    with pytest.raises(FetchError, match="too many redirects"):
        await fetch(site.url("/loop"))


async def test_internal_addresses_are_refused_unless_allowed(site: Site) -> None:
    with pytest.raises(FetchError, match=r"127\.0\.0\.1 resolves to 127\.0\.0\.1, a private or internal address"):
        await fetch(site.url("/page"), allow=Allowlist())
    with pytest.raises(FetchError, match="only http and https"):
        await fetch("file:///etc/passwd")


async def test_a_long_body_is_cut_at_max_bytes(site: Site) -> None:
    page = await fetch(site.url("/big"), max_bytes=10_000)
    assert page.truncated and page.text == "x" * 10_000
    whole = await fetch(site.url("/big"), max_bytes=200_000)
    assert not whole.truncated and len(whole.text) == 200_000


async def test_unreadable_answers_are_errors(site: Site) -> None:
    with pytest.raises(FetchError, match="application/octet-stream: only HTML, plain text, Markdown and PDF"):
        await fetch(site.url("/binary"))
    with pytest.raises(FetchError, match="answered 500"):
        await fetch(site.url("/broken"))
    with pytest.raises(FetchError, match="answered 404"):
        await fetch(site.url("/nowhere"))
    with pytest.raises(FetchError, match="PDF larger than 100 bytes"):
        await fetch(site.url("/paper.pdf"), max_bytes=100)


async def test_a_closed_port_is_an_error() -> None:
    async with Site({}) as site:
        url = site.url("/")
    with pytest.raises(FetchError, match="cannot fetch"):
        await fetch(url)
