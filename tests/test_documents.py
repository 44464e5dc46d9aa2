"""Research sources over HTTP: documents ingested as JSON or files, full-text search, and the agents' tool."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from fpdf import FPDF
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from tests.conftest import Platform

Start = Callable[..., Awaitable[Platform]]

HTML = """<html><head><title>x</title><script>var secret = "do not index";</script></head>
<body><h1>Analytical Engine</h1><p>Charles Babbage designed the <b>Analytical Engine</b>.</p></body></html>"""


def doc(title: str, content: str, content_type: str) -> dict[str, str]:
    return {"title": title, "content": content, "content_type": content_type}


def pdf(*pages: str) -> bytes:
    made = FPDF()
    made.set_font("helvetica", size=12)
    for text in pages:
        made.add_page()
        made.multi_cell(0, 10, text)
    return bytes(made.output())


async def test_documents_are_ingested_listed_and_searched(start_platform: Start) -> None:
    platform = await start_platform(background=True)
    async with platform.client() as client:
        lovelace = await client.post(
            "/v1/documents",
            json={"title": "Ada Lovelace", "content": "Ada Lovelace wrote the first computer program, for Babbage."},
        )
        assert lovelace.status_code == 201, lovelace.text
        assert "content" not in lovelace.json() and lovelace.json()["characters"] > 0
        notes = await client.post(
            "/v1/documents",
            json={
                "title": "Notes",
                "content": "# Notes\n\nA note that mentions Lovelace once.",
                "content_type": "text/markdown",
            },
        )
        html = await client.post(
            "/v1/documents", json={"title": "Engine", "content": HTML, "content_type": "text/html"}
        )
        upload = await client.post(
            "/v1/documents",
            files={"file": ("loom.md", b"# Jacquard loom\n\nPunched cards drove the loom.", "text/plain")},
        )
        assert notes.status_code == html.status_code == upload.status_code == 201
        assert upload.json()["title"] == "loom.md" and upload.json()["content_type"] == "text/markdown"

        stored = (await client.get(f"/v1/documents/{html.json()['id']}")).json()
        assert "Charles Babbage designed the Analytical Engine." in stored["content"]
        assert "do not index" not in stored["content"] and "<p>" not in stored["content"]

        hits = (await client.get("/v1/documents/search", params={"q": "lovelace"})).json()["hits"]
        assert [h["document_id"] for h in hits] == [lovelace.json()["id"], notes.json()["id"]]  # the title counts more
        assert "«Lovelace»" in hits[0]["snippet"]
        assert (await client.get("/v1/documents/search", params={"q": "punched cards"})).json()["hits"][0][
            "title"
        ] == "loom.md"
        assert len((await client.get("/v1/documents")).json()["documents"]) == 4

    async with platform.client(key=await platform.key_for("t2")) as stranger:
        assert (await stranger.get("/v1/documents/search", params={"q": "lovelace"})).json()["hits"] == []
        assert (await stranger.get(f"/v1/documents/{lovelace.json()['id']}")).status_code == 404


async def test_bad_documents_are_refused(start_platform: Start) -> None:
    platform = await start_platform(background=True)
    async with platform.client() as client:
        pdf = await client.post(
            "/v1/documents", json={"title": "x", "content": "%PDF-1.4", "content_type": "application/pdf"}
        )
        assert pdf.status_code == 422 and "base64" in pdf.json()["error"]["message"]
        word = await client.post(
            "/v1/documents", json={"title": "x", "content": "x", "content_type": "application/msword"}
        )
        assert word.status_code == 422 and "not supported" in word.json()["error"]["message"]
        assert (await client.post("/v1/documents", json={"title": "x"})).status_code == 422
        empty = await client.post(
            "/v1/documents", json={"title": "x", "content": "<p> </p>", "content_type": "text/html"}
        )
        assert empty.status_code == 422
        binary = await client.post(
            "/v1/documents", files={"file": ("a.bin", b"\xff\xfe\x00", "application/octet-stream")}
        )
        assert binary.status_code == 422 and "application/pdf" in binary.json()["error"]["message"]
        assert (await client.get("/v1/documents")).json()["documents"] == []


async def test_pdf_uploads_are_stored_as_their_text(start_platform: Start) -> None:
    platform = await start_platform(background=True)
    async with platform.client() as client:
        upload = await client.post(
            "/v1/documents",
            files={"file": ("engine.pdf", pdf("The difference engine tabulated polynomials.", "Page two."), "")},
        )
        assert upload.status_code == 201, upload.text
        assert upload.json()["content_type"] == "application/pdf" and upload.json()["title"] == "engine.pdf"
        stored = (await client.get(f"/v1/documents/{upload.json()['id']}")).json()
        assert stored["content"] == "The difference engine tabulated polynomials.\n\nPage two."
        hits = (await client.get("/v1/documents/search", params={"q": "polynomials"})).json()["hits"]
        assert [h["document_id"] for h in hits] == [upload.json()["id"]]

        as_json = await client.post(
            "/v1/documents",
            json=doc("Mill", base64.b64encode(pdf("The mill did the arithmetic.")).decode(), "application/pdf"),
        )
        assert as_json.status_code == 201, as_json.text
        assert (await client.get("/v1/documents/search", params={"q": "arithmetic"})).json()["hits"][0][
            "title"
        ] == "Mill"


async def test_unreadable_and_oversized_pdfs_are_refused(start_platform: Start) -> None:
    platform = await start_platform(background=True)
    async with platform.client() as client:
        corrupt = await client.post(
            "/v1/documents", files={"file": ("broken.pdf", b"%PDF-1.4 garbage", "application/pdf")}
        )
        assert corrupt.status_code == 422 and corrupt.json()["error"]["code"] == "invalid"
        assert "the PDF cannot be read" in corrupt.json()["error"]["message"]
        big = await client.post(
            "/v1/documents", files={"file": ("big.pdf", b"%PDF-1.4\n" + os.urandom(700_000), "application/pdf")}
        )
        assert big.status_code == 413 and big.json()["error"]["code"] == "too_large"
        assert "900000-byte limit" in big.json()["error"]["message"]
        assert (await client.get("/v1/documents")).json()["documents"] == []


async def test_an_agent_searches_the_documents_with_its_tool(start_platform: Start, tmp_path: Path) -> None:
    agents = tmp_path / "agents.toml"
    agents.write_text('[agents.assistant]\ntools = ["search_documents"]\n')

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        returned = [p for m in messages for p in getattr(m, "parts", []) if isinstance(p, ToolReturnPart)]
        if not returned:
            yield {0: DeltaToolCall(name="search_documents", json_args='{"query": "first program"}', tool_call_id="s1")}
        else:
            hits = json.loads(str(returned[-1].content))
            yield f"According to [{hits[0]['document_id']}], Ada Lovelace."

    def whole(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:  # the same, for a turn nobody streams
        returned = [p for m in messages for p in getattr(m, "parts", []) if isinstance(p, ToolReturnPart)]
        if not returned:
            call = ToolCallPart(tool_name="search_documents", args='{"query": "first program"}', tool_call_id="s1")
            return ModelResponse(parts=[call])
        hits = json.loads(str(returned[-1].content))
        return ModelResponse(parts=[TextPart(f"According to [{hits[0]['document_id']}], Ada Lovelace.")])

    model = FunctionModel(whole, stream_function=stream)
    platform = await start_platform(model, background=True, agents_file=agents)
    async with platform.client() as client:
        doc = await client.post(
            "/v1/documents", json={"title": "Ada Lovelace", "content": "Ada Lovelace wrote the first program."}
        )
        conversation_id = (await client.post("/v1/conversations", json={})).json()["id"]
        reply = await client.post(
            f"/v1/conversations/{conversation_id}/messages", json={"message": "Who programmed first?"}
        )
    assert reply.status_code == 200, reply.text
    assert reply.json()["message"]["content"] == f"According to [{doc.json()['id']}], Ada Lovelace."
