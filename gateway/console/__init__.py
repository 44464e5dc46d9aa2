"""The web console: static HTML, CSS and ES modules under `/console` (no build step: the committed files are
the source), which call the public `/v1` API with the key the user signs in with; and one route of its own,
a research report rendered from Markdown to safe HTML (raw HTML escaped, citations made links).

See docs/console.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from litestar import Response, get
from litestar.params import FromPath
from litestar.router import Router
from litestar.static_files import create_static_files_router
from markdown_it import MarkdownIt
from markdown_it.token import Token

from bus import subjects
from gateway.caller import Caller
from gateway.errors import ApiError
from gateway.state import ident
from schemas.errors import ErrorCode
from schemas.research import Citation, GetResearch, ResearchView

__all__ = ["STATIC", "console_router", "render_report", "report_html"]

STATIC = Path(__file__).parent / "static"
# the console's pages load only their own files and talk only to this origin
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# a citation as the research writer puts it: [doc:<id>], [run:<id>] or [<http(s) URL>]
_CITATION = re.compile(r"\[((?:doc|run):[A-Za-z0-9_.:-]+|https?://[^\s\]]+)\]")
_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")


async def _secure(response: Response[Any]) -> Response[Any]:
    response.headers.update(SECURITY_HEADERS)
    return response


def console_router() -> Router:
    """`/console`: index.html for the directory, the files as they are, never in the OpenAPI document."""
    return create_static_files_router(
        path="/console",
        directories=[STATIC],
        html_mode=True,
        name="console",
        include_in_schema=False,
        after_request=_secure,
    )


def _href(ref: str) -> str:
    """Where a citation points in the console (a document or run page), or the cited web page."""
    if ref.startswith("doc:"):
        return f"#/documents/{ref.removeprefix('doc:')}"
    if ref.startswith("run:"):
        return f"#/runs/{ref.removeprefix('run:')}"
    return str(_markdown.normalizeLink(ref))


def _text(content: str) -> Token:
    token = Token("text", "", 0)
    token.content = content
    return token


def _citations(children: list[Token], verified: dict[str, bool]) -> list[Token]:
    """The inline tokens with each `[ref]` in plain text (not in code, not inside a link) made a link."""
    out: list[Token] = []
    in_link = 0
    for token in children:
        in_link += {"link_open": 1, "link_close": -1}.get(token.type, 0)
        if token.type != "text" or in_link:
            out.append(token)
            continue
        at = 0
        for match in _CITATION.finditer(token.content):
            ref = match.group(1)
            if match.start() > at:
                out.append(_text(token.content[at : match.start()]))
            opening = Token("link_open", "a", 1)
            opening.attrs = {"href": _href(ref), "class": "citation" if verified.get(ref) else "citation unverified"}
            if not ref.startswith(("doc:", "run:")):
                opening.attrs |= {"rel": "noopener noreferrer", "target": "_blank"}
            out += [opening, _text(ref), Token("link_close", "a", -1)]
            at = match.end()
        out.append(_text(token.content[at:]) if at else token)
    return out


def report_html(report: str, citations: list[Citation]) -> str:
    """The Markdown report as HTML: raw HTML in it is escaped, links are only those markdown-it allows (no
    `javascript:`), and each citation `[ref]` becomes a link of class `citation` (also `unverified` when the
    job never read or ran what it names); links to other sites open apart, without a referrer."""
    verified = {c.ref: c.verified for c in citations}
    tokens = _markdown.parse(report)
    for block in tokens:
        if block.type == "inline" and block.children:
            block.children = _citations(block.children, verified)
        for token in block.children or []:
            href = token.attrGet("href") if token.type == "link_open" else None
            if isinstance(href, str) and href.startswith(("http://", "https://")):
                token.attrs |= {"rel": "noopener noreferrer", "target": "_blank"}
    html: str = _markdown.renderer.render(tokens, _markdown.options, {})
    return html


@get(
    "/v1/console/research/{job_id:str}/report",
    media_type="text/html; charset=utf-8",
    tags=["research"],
    summary="The job's report as HTML for the web console (raw HTML escaped; citations as links; 409 until it ends)",
)
async def render_report(caller: Caller, job_id: FromPath[str]) -> str:
    query = GetResearch(job_id=ident(job_id))
    job = (await caller.ask(subjects.ActorName.RESEARCH, "get_research", query, ResearchView)).job
    if job.report is None:
        raise ApiError(ErrorCode.CONFLICT, f"research job {job.id} is {job.status.value}: no report yet")
    return report_html(job.report, job.citations)
