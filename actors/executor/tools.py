"""The tool registry: built-in tools, `python:` tools and MCP servers' tools, and which agent may call which.

An agent's `tools` list names what it may call:

- a built-in tool: `current_time`, `search_documents`, `fetch_url`, `wait_for_event` (parks the run until
  an event arrives: actors/executor/event_waits.py);
- `python:<module>:<function>`: a Python function (its signature and docstring are its schema);
- `mcp:<server>`: every tool of a server declared under `[mcp_servers.<server>]`, including tools it
  adds later; `mcp:<server>/<tool>`: one of them. The model sees them as `<server>_<tool>`.

A `python:` tool may be declared `isolated` (run in a child process under CPU-time, memory and
wall-time limits):

```toml
[tools."python:myapp.tools:lookup_order"]
isolated = true
limits = { cpu_s = 5, memory_mb = 256, wall_s = 10 }
side_effects = true  # it acts on the world: run at most once per tool call, even across a crash
```

A side-effecting tool's call is never repeated when a crashed run is resumed (actors/executor/journal.py);
other tools' calls that were cut off are simply made again.

Every agent also has `read_context` (with application state) and `ask_agent` (with sub-agents),
which belong to a run and are not in the registry.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio
import jsonschema  # type: ignore[import-untyped]  # (the mcp package depends on it; no stubs)
import msgspec
import pydantic
from pydantic_ai import RunContext, Tool
from pydantic_ai.exceptions import ModelRetry, ToolFailed
from pydantic_ai.models.test import TestModel
from pydantic_ai.tools import ToolDefinition
from pydantic_ai.toolsets import AbstractToolset, FunctionToolset, ToolsetTool
from pydantic_ai.usage import RunUsage

from actors.executor.deps import RunDeps
from actors.executor.event_waits import wait_for_event
from actors.executor.isolation import IsolationLimits, ToolStopped, call_isolated
from actors.executor.limits import SIDE_EFFECTS, UNTRUSTED, RunLimits, cap_result
from actors.executor.mcp_servers import McpServers
from bus import metrics
from bus.errors import BusError
from schemas.errors import ErrorCode
from schemas.tools import ToolCatalog, ToolInfo, ToolResult, ToolSource

__all__ = [
    "SOURCE_OF_TOOL",
    "ToolRegistry",
    "ToolSpec",
    "ask_agent",
    "current_time",
    "fetch_url",
    "read_context",
    "search_documents",
]

MCP_PREFIX = "mcp:"
PYTHON_PREFIX = "python:"


# --- built-in tools ---------------------------------------------------------------------------
# async, though they never wait: pydantic-ai runs a plain `def` tool in a worker thread


async def current_time(timezone: str = "UTC") -> str:
    """The current date and time (ISO 8601) in an IANA time zone such as Europe/Paris."""
    try:
        tz: Any = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {timezone!r}"
    return datetime.now(UTC).astimezone(tz).isoformat(timespec="seconds")


async def read_context(ctx: RunContext[RunDeps], path: str = "") -> str:
    """Read part of the application's current state: a dotted path like `cart.items.0`, or "" for all of it."""
    value: Any = ctx.deps.context or {}
    for key in filter(None, path.split(".")):
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return f"nothing at {path!r}"
    return json.dumps(value, ensure_ascii=False, default=str)


async def ask_agent(ctx: RunContext[RunDeps], agent: str, task: str) -> str:
    """Hand a self-contained sub-problem to another agent and get its answer. `agent` is one of the
    agents named in these instructions; `task` must say everything that agent needs to know."""
    deps = ctx.deps
    if agent not in deps.subagents:
        return f"refused: {agent!r} is not one of the agents you may ask ({', '.join(deps.subagents)})"
    if deps.depth >= deps.max_depth or deps.subrun is None:
        return f"refused: sub-agent depth limit ({deps.max_depth}) reached; answer with what you have"
    return await deps.subrun(agent, task, ctx.usage.total_tokens)


async def search_documents(ctx: RunContext[RunDeps], query: str) -> str:
    """Search the documents this application has ingested. Returns the best matches as JSON: each with
    its document_id (cite it), title and the matching passages. Use a few specific keywords."""
    if ctx.deps.search is None:
        return "document search is not available here"
    return await ctx.deps.search(query)


async def fetch_url(ctx: RunContext[RunDeps], url: str) -> str:
    """Fetch a web page (http or https) and read its text. Returns JSON with the url (cite it), title
    and text; long pages are cut at a size limit."""
    if ctx.deps.fetch is None:
        return "fetching pages is not available here"
    return await ctx.deps.fetch(url)


SOURCE_OF_TOOL = {"search_documents": "documents", "fetch_url": "web"}


async def _only_allowed_sources(ctx: RunContext[RunDeps], tool: ToolDefinition) -> ToolDefinition | None:
    """A research sub-run sees only the source tools its job asked for."""
    allowed = ctx.deps.sources
    return tool if allowed is None or SOURCE_OF_TOOL[tool.name] in allowed else None


async def _only_with_subagents(ctx: RunContext[RunDeps], tool: ToolDefinition) -> ToolDefinition | None:
    return tool if ctx.deps.subagents else None


async def _only_with_context(ctx: RunContext[RunDeps], tool: ToolDefinition) -> ToolDefinition | None:
    return tool if ctx.deps.context is not None else None


def run_tools() -> list[Tool[RunDeps]]:
    """The tools every agent has, shown to the model only when its run has what they need."""
    return [
        Tool[RunDeps](read_context, takes_ctx=True, prepare=_only_with_context),
        Tool[RunDeps](ask_agent, takes_ctx=True, prepare=_only_with_subagents),
    ]


BUILT_IN_TOOLS: dict[str, Callable[[], Tool[RunDeps]]] = {
    "current_time": lambda: Tool[RunDeps](current_time),
    "search_documents": lambda: Tool[RunDeps](search_documents, takes_ctx=True, prepare=_only_allowed_sources),
    "wait_for_event": lambda: Tool[RunDeps](wait_for_event, takes_ctx=True),
    # a web page is anyone's text: the model reads it as untrusted data
    "fetch_url": lambda: Tool[RunDeps](
        fetch_url, takes_ctx=True, prepare=_only_allowed_sources, metadata={UNTRUSTED: True}
    ),
}


# --- python: tools ----------------------------------------------------------------------------


class ToolSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[tools."python:<module>:<function>"]`: how a python tool runs."""

    isolated: bool = False  # in a child process under `limits`
    limits: IsolationLimits = IsolationLimits()
    side_effects: bool = False  # at most once per tool call (actors/executor/journal.py)


def _python_tool(selector: str, spec: ToolSpec) -> Tool[RunDeps]:
    target = selector.removeprefix(PYTHON_PREFIX)
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"tool {selector!r}: write python:<module>:<function>")
    function = getattr(importlib.import_module(module_name), attr)
    metadata = {SIDE_EFFECTS: True} if spec.side_effects else None
    tool = Tool[RunDeps](function, metadata=metadata)
    if not spec.isolated:
        return tool
    if tool.takes_ctx:
        raise ValueError(f"tool {selector!r}: an isolated tool cannot take the run context")
    name, limits = tool.name, spec.limits

    async def isolated(**kwargs: Any) -> Any:
        return await call_isolated(name, target, kwargs, limits)

    schema = tool.tool_def.parameters_json_schema
    contained = Tool[RunDeps].from_schema(isolated, name, tool.description, schema)
    contained.metadata = metadata
    return contained


# --- the registry -----------------------------------------------------------------------------


@dataclass
class AgentTools:
    """What one agent may call: function tools by name, and MCP servers (each: all tools, or some)."""

    functions: list[str] = field(default_factory=list)
    servers: dict[str, frozenset[str] | None] = field(default_factory=dict)


@dataclass
class Registered:
    tool: Tool[RunDeps]
    source: ToolSource
    isolated: bool = False


class ToolRegistry:
    """Every tool some agent names, built once; the toolsets each agent's runs get."""

    def __init__(self, servers: McpServers) -> None:
        self.servers = servers
        self.functions: dict[str, Registered] = {}
        self.agents: dict[str, AgentTools] = {}
        self._built: dict[str, Registered] = {}  # by selector
        self._selector_of: dict[str, str] = {}  # tool name -> the selector that made it

    @classmethod
    def build(cls, tools_of: dict[str, list[str]], specs: dict[str, ToolSpec], servers: McpServers) -> ToolRegistry:
        """The registry for agents' `tools` lists; ValueError naming the first selector that names nothing."""
        registry = cls(servers)
        unused = set(specs) - {t for tools in tools_of.values() for t in tools}
        if unused:
            raise ValueError(f"[tools] declares {sorted(unused)}, which no agent uses")
        for agent, selectors in tools_of.items():
            registry.agents[agent] = registry._resolve(agent, selectors, specs)
        return registry

    def _resolve(self, agent: str, selectors: list[str], specs: dict[str, ToolSpec]) -> AgentTools:
        found = AgentTools()
        for selector in selectors:
            if selector.startswith(MCP_PREFIX):
                server, _, tool = selector.removeprefix(MCP_PREFIX).partition("/")
                if server not in self.servers:
                    raise ValueError(f"agent {agent!r}: tool {selector!r} names no [mcp_servers.{server}]")
                if not tool:
                    found.servers[server] = None
                elif (some := found.servers.get(server, frozenset())) is not None:
                    found.servers[server] = some | {tool}
                continue
            registered = self._built.get(selector) or self._build(agent, selector, specs)
            name = registered.tool.name
            if self._selector_of.setdefault(name, selector) != selector:
                raise ValueError(
                    f"agent {agent!r}: {selector!r} and {self._selector_of[name]!r} are both named {name!r}"
                )
            self._built[selector] = registered
            self.functions[name] = registered
            found.functions.append(name)
        return found

    @staticmethod
    def _build(agent: str, selector: str, specs: dict[str, ToolSpec]) -> Registered:
        if selector in BUILT_IN_TOOLS:
            return Registered(BUILT_IN_TOOLS[selector](), ToolSource.BUILT_IN)
        if selector.startswith(PYTHON_PREFIX):
            spec = specs.get(selector, ToolSpec())
            return Registered(_python_tool(selector, spec), ToolSource.PYTHON, spec.isolated)
        raise ValueError(
            f"agent {agent!r}: unknown tool {selector!r}: use one of {sorted(BUILT_IN_TOOLS)}, "
            "python:<module>:<function>, mcp:<server> or mcp:<server>/<tool>"
        )

    def tools_for(self, agent: str) -> list[Tool[RunDeps]]:
        return [self.functions[name].tool for name in self.agents.get(agent, AgentTools()).functions]

    def toolsets_for(self, agent: str) -> dict[str, AbstractToolset[RunDeps]]:
        """The agent's MCP servers' toolsets, by server name."""
        servers = self.agents.get(agent, AgentTools()).servers
        return {name: self.servers[name].toolset(allowed) for name, allowed in servers.items()}

    # --- the catalog and direct calls (ab.executor.svc.tools / call_tool) -----------------------

    async def _find(self, name: str, ctx: RunContext[RunDeps]) -> tuple[AbstractToolset[RunDeps], ToolsetTool[RunDeps]]:
        """The toolset holding the tool `name` (as the model calls it), and the tool. A tool of a server that
        does not answer now is `unavailable`; one nobody has, `unknown_tool`."""
        toolsets: list[AbstractToolset[RunDeps]] = [FunctionToolset([r.tool for r in self.functions.values()])]
        toolsets += [s.toolset(None) for s in self.servers if name.startswith(f"{s.name}_")]
        for toolset in toolsets:
            try:
                tools = await toolset.get_tools(ctx)
            except RuntimeError as e:  # its server is down
                raise BusError(ErrorCode.UNAVAILABLE, str(e)[:300]) from None
            if name in tools:
                return toolset, tools[name]
        known = sorted(self.functions) + [f"{s.name}_{t}" for s in self.servers for t in s.definitions]
        raise BusError(
            ErrorCode.UNKNOWN_TOOL,
            f"there is no tool {name!r}: GET /v1/tools lists them",
            {"tools": ",".join(known)[:2000]},
        )

    async def catalog(self) -> ToolCatalog:
        """The tools each agent can call now (an unreachable server's tools are left out, and said)."""
        for server in self.servers:
            if server.error is not None:
                with contextlib.suppress(RuntimeError):
                    await server.connected()  # one more try (not too often): it may be back
        infos: dict[str, ToolInfo] = {}
        for registered in self.functions.values():
            td = registered.tool.tool_def
            infos[td.name] = _info(td, registered.source, None, isolated=registered.isolated)
        for server in self.servers:
            for name, td in server.definitions.items():
                exposed = f"{server.name}_{name}"
                infos[exposed] = _info(
                    td, ToolSource.MCP, server.name, name=exposed, isolated=server.spec.isolated, untrusted=True
                )
        agents: dict[str, list[str]] = {}
        for agent, tools in self.agents.items():
            names = set(tools.functions)
            for server_name, allowed in tools.servers.items():
                server = self.servers[server_name]
                names |= {f"{server_name}_{n}" for n in server.definitions if allowed is None or n in allowed}
            agents[agent] = sorted(names)
        unavailable = {s.name: s.error for s in self.servers if s.error is not None}
        return ToolCatalog(tools=sorted(infos.values(), key=lambda i: i.name), agents=agents, unavailable=unavailable)

    async def call(self, name: str, raw_args: bytes, deps: RunDeps, limits: RunLimits) -> ToolResult:
        """One call of the tool `name` (as the model calls it) with JSON arguments, for `deps.tenant`."""
        ctx = _context(deps)
        toolset, tool = await self._find(name, ctx)
        async with toolset:
            args = _validated(tool, raw_args)
            result = await _run(toolset, tool, name, args, ctx, limits)
        result, cut = cap_result(result, limits.tool_result_chars)
        output = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)
        untrusted = bool((tool.tool_def.metadata or {}).get(UNTRUSTED))
        return ToolResult(name=name, output=output, truncated=cut, untrusted=untrusted)


def _context(deps: RunDeps) -> RunContext[RunDeps]:
    return RunContext(deps=deps, model=TestModel(), usage=RunUsage())


def _validated(tool: ToolsetTool[RunDeps], raw_args: bytes) -> dict[str, Any]:
    try:
        args = tool.args_validator.validate_json(raw_args or b"{}")
    except pydantic.ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'args'}: {err['msg']}" for err in e.errors()[:5])
        raise BusError(ErrorCode.INVALID, f"bad arguments for {tool.tool_def.name}: {problems}") from None
    if not isinstance(args, dict):
        raise BusError(ErrorCode.INVALID, "args must be a JSON object")
    if not isinstance(tool.toolset, FunctionToolset):  # an MCP tool: its server's schema, checked here first
        validator = jsonschema.Draft202012Validator(tool.tool_def.parameters_json_schema)
        errors = sorted(validator.iter_errors(args), key=lambda e: list(e.absolute_path))
        if errors:
            problems = "; ".join(f"{'.'.join(map(str, e.absolute_path)) or 'args'}: {e.message}" for e in errors[:5])
            raise BusError(ErrorCode.INVALID, f"bad arguments for {tool.tool_def.name}: {problems}")
    return args


async def _run(
    toolset: AbstractToolset[RunDeps],
    tool: ToolsetTool[RunDeps],
    name: str,
    args: dict[str, Any],
    ctx: RunContext[RunDeps],
    limits: RunLimits,
) -> Any:
    outcome = "error"
    try:
        with anyio.fail_after(limits.tool_timeout_s):
            result = await toolset.call_tool(name, args, ctx, tool)
        outcome = "ok"
        return result
    except TimeoutError:
        outcome = "timeout"
        raise BusError(ErrorCode.TIMEOUT, f"the tool {name} timed out after {limits.tool_timeout_s:g} s") from None
    except ToolStopped as e:
        raise BusError(ErrorCode.TOOL_FAILED, str(e), {"limit": e.limit}) from None
    except (ModelRetry, ToolFailed) as e:  # the tool's own error, as the model would read it
        outcome = "retry"
        raise BusError(ErrorCode.TOOL_FAILED, f"the tool {name} failed: {e}"[:500]) from None
    except Exception as e:
        raise BusError(ErrorCode.TOOL_FAILED, f"the tool {name} failed: {type(e).__name__}: {e}"[:500]) from None
    finally:
        metrics.TOOL_CALLS.labels(tool.tool_def.name, outcome).inc()


def _info(
    td: ToolDefinition,
    source: ToolSource,
    server: str | None,
    *,
    name: str | None = None,
    isolated: bool = False,
    untrusted: bool | None = None,
) -> ToolInfo:
    return ToolInfo(
        name=name or td.name,
        source=source,
        server=server,
        description=td.description or "",
        parameters=msgspec.Raw(json.dumps(td.parameters_json_schema).encode()),
        untrusted=bool((td.metadata or {}).get(UNTRUSTED)) if untrusted is None else untrusted,
        isolated=isolated,
    )
