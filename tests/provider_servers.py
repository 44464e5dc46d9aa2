"""A model provider on loopback for the tests: a real HTTP server (uvicorn, a bare ASGI app) speaking
OpenAI's chat completions (`POST /v1/chat/completions`) and Anthropic's messages (`POST /v1/messages`)
wire formats, whole or streamed (SSE), with tool calls and usage — and, on demand, a 429 with
`Retry-After`, a 500, or a hang. pydantic-ai's OpenAIChatModel and AnthropicModel (the real SDKs) talk
to it through `base_url`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

from bus.embedded import free_port
from tests.receivers import read_body

__all__ = ["Behaviour", "ProviderServer"]

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


class Behaviour(enum.StrEnum):
    ANSWER = "answer"
    SERVER_ERROR = "500"
    RATE_LIMITED = "429"  # with Retry-After: `retry_after` seconds
    HANG = "hang"  # accepts the request and never answers (until the server stops)


class ProviderServer:
    """One provider deployment. Set `behaviour` (and `retry_after`) to make it fail; `tool` makes the first
    answer to a request that offers that tool a call of it. `requests` holds every request body received."""

    def __init__(self, name: str = "provider") -> None:
        self.name = name
        self.port = free_port()
        self.behaviour = Behaviour.ANSWER
        self.retry_after = 2
        self.tool: str | None = None
        self.tool_args: dict[str, Any] = {}
        self.requests: list[dict[str, Any]] = []
        self.answered = 0
        self._stopping = asyncio.Event()
        self._server: uvicorn.Server | None = None
        self._serving: asyncio.Task[None] | None = None

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> ProviderServer:
        config = uvicorn.Config(
            self._app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off", interface="asgi3",
            timeout_graceful_shutdown=1,
        )  # fmt: skip
        self._server = uvicorn.Server(config)
        self._serving = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._serving.done():
                self._serving.result()
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        self._stopping.set()  # hung requests end
        if self._server is not None and self._serving is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._serving, 10)

    async def __aenter__(self) -> ProviderServer:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    # --- ASGI ---------------------------------------------------------------------------------

    async def _app(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = json.loads(await read_body(receive) or b"{}")
        self.requests.append(request)
        path = scope["path"]
        anthropic = path.endswith("/messages")
        if path.endswith("/chat/completions") or anthropic:
            await self._answer(request, send, anthropic=anthropic)
        else:
            await _respond(send, 404, {"error": {"message": f"no route {path}"}})

    async def _answer(self, request: dict[str, Any], send: Send, *, anthropic: bool) -> None:
        match self.behaviour:
            case Behaviour.HANG:
                await self._stopping.wait()
                await _respond(send, 503, {"error": {"message": "shutting down"}})
                return
            case Behaviour.SERVER_ERROR:
                error = {"type": "error", "error": {"type": "api_error", "message": "internal error"}}
                await _respond(
                    send, 500, error if anthropic else {"error": {"message": "boom", "type": "server_error"}}
                )
                return
            case Behaviour.RATE_LIMITED:
                headers = [(b"retry-after", str(self.retry_after).encode())]
                body = (
                    {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
                    if anthropic
                    else {
                        "error": {"message": "slow down", "type": "rate_limit_exceeded", "code": "rate_limit_exceeded"}
                    }
                )
                await _respond(send, 429, body, headers)
                return
            case Behaviour.ANSWER:
                pass
        self.answered += 1
        call = self._tool_call(request, anthropic=anthropic)
        text = f"answer from {self.name}"
        model = request.get("model", "model")
        if request.get("stream"):
            chunks = _anthropic_stream(model, text, call) if anthropic else _openai_stream(model, text, call)
            await _stream(send, chunks)
        else:
            await _respond(
                send, 200, _anthropic_whole(model, text, call) if anthropic else _openai_whole(model, text, call)
            )

    def _tool_call(self, request: dict[str, Any], *, anthropic: bool) -> tuple[str, str] | None:
        """(tool name, JSON args) when the request offers `tool` and has not had its result yet."""
        if self.tool is None:
            return None
        offered = [t.get("name") if anthropic else t.get("function", {}).get("name") for t in request.get("tools", [])]
        if self.tool not in offered:
            return None
        for message in request.get("messages", []):
            content = message.get("content")
            if message.get("role") == "tool":
                return None
            if isinstance(content, list) and any(
                isinstance(c, dict) and c.get("type") == "tool_result" for c in content
            ):
                return None
        return self.tool, json.dumps(self.tool_args)


def _usage_words(text: str) -> int:
    return len(text.split())


def _openai_whole(model: str, text: str, call: tuple[str, str] | None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": None if call else text}
    if call:
        message["tool_calls"] = [
            {"id": "call_1", "type": "function", "function": {"name": call[0], "arguments": call[1]}}
        ]
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if call else "stop"}],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": _usage_words(text),
            "total_tokens": 10 + _usage_words(text),
        },
    }


def _openai_stream(model: str, text: str, call: tuple[str, str] | None) -> list[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
        choices = [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else []
        body: dict[str, Any] = {
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": choices,
        }  # fmt: skip
        if usage is not None:
            body["usage"] = usage
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    chunks = [chunk({"role": "assistant", "content": ""})]
    if call:
        tool = {"index": 0, "id": "call_1", "type": "function", "function": {"name": call[0], "arguments": call[1]}}
        chunks += [chunk({"tool_calls": [tool]}), chunk({}, "tool_calls")]
    else:
        chunks += [chunk({"content": word + " "}) for word in text.split()]
        chunks.append(chunk({}, "stop"))
    words = _usage_words(text)
    chunks.append(chunk({}, usage={"prompt_tokens": 10, "completion_tokens": words, "total_tokens": 10 + words}))
    chunks.append(b"data: [DONE]\n\n")
    return chunks


def _anthropic_whole(model: str, text: str, call: tuple[str, str] | None) -> dict[str, Any]:
    content: list[dict[str, Any]] = (
        [{"type": "tool_use", "id": "toolu_1", "name": call[0], "input": json.loads(call[1])}]
        if call
        else [{"type": "text", "text": text}]
    )
    return {
        "id": "msg_1", "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": "tool_use" if call else "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": _usage_words(text)},
    }  # fmt: skip


def _anthropic_stream(model: str, text: str, call: tuple[str, str] | None) -> list[bytes]:
    def event(kind: str, data: dict[str, Any]) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()

    start: dict[str, Any] = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 1},
    }  # fmt: skip
    chunks = [event("message_start", {"message": start})]
    if call:
        block = {"type": "tool_use", "id": "toolu_1", "name": call[0], "input": {}}
        chunks += [
            event("content_block_start", {"index": 0, "content_block": block}),
            event("content_block_delta", {"index": 0, "delta": {"type": "input_json_delta", "partial_json": call[1]}}),
        ]
    else:
        chunks.append(event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}))
        chunks += [
            event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": word + " "}})
            for word in text.split()
        ]
    chunks.append(event("content_block_stop", {"index": 0}))
    stop = {"stop_reason": "tool_use" if call else "end_turn", "stop_sequence": None}
    chunks.append(event("message_delta", {"delta": stop, "usage": {"output_tokens": _usage_words(text)}}))
    chunks.append(event("message_stop", {}))
    return chunks


async def _respond(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _stream(send: Send, chunks: list[bytes]) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    for chunk in chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
