"""GET /v1/tools and POST /v1/tools/{name}/call: the tools each agent can call, and one call of one
tool for the caller's tenant (to test a tool). Thin: each is one request to the executor."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import get, post
from litestar.params import FromPath, JSONBody

from bus import subjects
from gateway.caller import Caller
from schemas.tools import CallTool, ListTools, ToolCatalog, ToolInfo, ToolResult, ToolSource

__all__ = ["ToolCall", "ToolView", "Tools", "call_tool", "list_tools"]


class ToolView(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # what the model calls it, and what POST /v1/tools/{name}/call takes
    source: ToolSource  # built-in, python or mcp (then `server` names the server)
    server: str | None = None
    description: str = ""
    parameters: dict[str, Any] = {}  # its arguments' JSON schema
    untrusted: bool = False  # its output reaches the model quoted as untrusted data
    isolated: bool = False  # it runs in a child process under CPU, memory and wall-time limits


class Tools(msgspec.Struct, frozen=True, kw_only=True):
    tools: list[ToolView]
    agents: dict[str, list[str]]  # agent -> the tools it can call
    unavailable: dict[str, str] = {}  # MCP server -> why its tools are missing now


class ToolCall(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    args: dict[str, Any] = {}  # the tool's arguments, as its JSON schema in GET /v1/tools says


@get("/v1/tools", tags=["tools"], summary="The tools each agent can call, with their JSON schemas and sources")
async def list_tools(caller: Caller) -> Tools:
    catalog = await caller.ask(subjects.ActorName.EXECUTOR, "tools", ListTools(), ToolCatalog)
    views = [
        ToolView(
            **{f: getattr(t, f) for f in ToolInfo.__struct_fields__ if f != "parameters"},
            parameters=msgspec.json.decode(t.parameters),
        )
        for t in catalog.tools
    ]
    return Tools(tools=views, agents=catalog.agents, unavailable=catalog.unavailable)


@post("/v1/tools/{name:str}/call", status_code=200, tags=["tools"], summary="Run one tool once (to test it)")
async def call_tool(caller: Caller, name: FromPath[str], data: JSONBody[ToolCall]) -> ToolResult:
    gw = caller.gateway
    request = CallTool(name=name, args=msgspec.Raw(msgspec.json.encode(data.args)))
    subject = subjects.service(subjects.ActorName.EXECUTOR, "call_tool")
    return await gw.bus.request(subject, request, ToolResult, trace=caller.trace, timeout=gw.config.reply_timeout_s)
