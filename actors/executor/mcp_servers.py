"""MCP servers declared in the agents file, started once per executor process and shared by every run.

```toml
[mcp_servers.files]                       # a stdio server: a child process speaking MCP on stdin/stdout
command = "npx"
args = ["-y", "@modelcontextprotocol/server-filesystem", "/srv/docs"]
env = { LOG_LEVEL = "warn" }              # the child's environment: these plus PATH, HOME, … (never ours)
isolated = true                           # under CPU-time and memory rlimits (see isolation.py)
limits = { cpu_s = 60, memory_mb = 512, wall_s = 30 }
side_effects = true                       # its tools act on the world: each call at most once (journal.py)

[mcp_servers.search]                      # a streamable HTTP server
url = "https://mcp.example.com/mcp"
headers = { Authorization = "Bearer ${SEARCH_TOKEN}" }   # ${VAR} is read from the environment
```

Each server is one pydantic-ai `MCPToolset` (on FastMCP's client), entered when the executor starts.
Its tools are listed then, and again whenever the server says they changed: over a
`subscriptions/listen` stream on a 2026-07-28 session, or its `notifications/tools/list_changed` on
an older one. The model sees a server's tools as `<server>_<tool>`. A server that cannot be reached
at start is retried when a run needs it (at most every RETRY_S seconds; meanwhile a run of an agent
that uses it fails, saying so); a stdio server that died (or an isolated one stopped at its
wall-time limit) is started again for the next call.

A server over HTTP is reached through `actors/_outbound_http.py`: every connection goes to an
address checked against the outbound rules, so an internal MCP server's host (or network) must be
listed in `AGENTBUS_OUTBOUND_ALLOW`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import anyio
import httpx2
import msgspec
import structlog
from pydantic_ai import RunContext
from pydantic_ai.models.test import TestModel
from pydantic_ai.tools import ToolDefinition
from pydantic_ai.toolsets import AbstractToolset, ToolsetTool
from pydantic_ai.usage import RunUsage

from actors._outbound import Allowlist
from actors._outbound_http import mcp_http_client
from actors.executor.isolation import IsolationLimits, ToolStopped, exec_argv
from actors.executor.limits import SIDE_EFFECTS, UNTRUSTED

if TYPE_CHECKING:
    from pydantic_ai.mcp import MCPToolset

__all__ = ["McpServer", "McpServerSpec", "McpServers"]

log = structlog.get_logger("executor.mcp")
SERVER_NAME = re.compile(r"^[A-Za-z0-9-]{1,40}$")
CONNECT_TIMEOUT_S = 20.0
RETRY_S = 10.0  # a server that could not be reached is not tried again sooner


class McpServerSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[mcp_servers.<name>]`: a stdio command, or a streamable HTTP url."""

    command: str | None = None
    args: list[str] = []
    env: dict[str, str] = {}
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = {}
    isolated: bool = False  # stdio only: run under `limits`
    limits: IsolationLimits = IsolationLimits()
    side_effects: bool = False  # every tool of it runs at most once per tool call (actors/executor/journal.py)

    def __post_init__(self) -> None:
        if (self.command is None) == (self.url is None):
            raise ValueError("an MCP server has either a command (stdio) or a url (streamable HTTP)")
        if self.url is not None and self.isolated:
            raise ValueError("isolated applies to stdio servers (a command), not to a url")


def _expanded(values: dict[str, str]) -> dict[str, str]:
    """`${VAR}` in a value, read from the environment (a missing one is an error at start)."""
    try:
        return {k: string.Template(v).substitute(os.environ) for k, v in values.items()}
    except KeyError as e:
        raise ValueError(f"environment variable {e.args[0]} is not set") from None


def _catalog_context() -> RunContext[Any]:
    """A run context for listing tools outside a run (MCP tools read nothing from it)."""
    return RunContext(deps=None, model=TestModel(), usage=RunUsage())


class McpServer:
    """One declared server: its connection, its tools as last listed, and the watcher that relists them."""

    def __init__(self, name: str, spec: McpServerSpec, allow: Allowlist | None = None) -> None:
        if not SERVER_NAME.match(name):
            raise ValueError(f"MCP server name {name!r}: use letters, digits and '-' (at most 40)")
        self.name = name
        self.spec = spec
        self.allow = allow if allow is not None else Allowlist()
        self._http: httpx2.AsyncClient | None = None  # a server over HTTP: its client, while connected
        self.definitions: dict[str, ToolDefinition] = {}  # by the server's own tool names
        self.error: str | None = None  # why it is not connected, when it is not
        self.changes = 0  # how many times its tool list was read again after a change
        self._mcp: MCPToolset[Any] | None = None
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._failed_at = -RETRY_S

    @property
    def source(self) -> str:
        return f"mcp:{self.name}"

    def _build(self) -> MCPToolset[Any]:
        # the MCP client (pydantic_ai.mcp, fastmcp, mcp) is imported when a server is first built: it took
        # 2 s of the executor's start on this 2-core machine, for agents files that declare no server
        from fastmcp.client.transports import StdioTransport
        from pydantic_ai.mcp import MCPToolset

        spec = self.spec
        common: dict[str, Any] = {"cache_tools": False, "message_handler": self._on_message, "init_timeout": 15}
        if spec.url is not None:
            self._http = mcp_http_client(self.allow, headers=_expanded(spec.headers) or None)
            return MCPToolset(spec.url, http_client=self._http, **common)
        assert spec.command is not None
        command, args = (spec.command, list(spec.args))
        if spec.isolated:
            command, args = exec_argv(spec.limits, command, args)
        transport = StdioTransport(command, args, env=_expanded(spec.env) or None, cwd=spec.cwd, keep_alive=False)
        return MCPToolset(transport, **common)

    async def start(self) -> None:
        """Connect (start the process), list the tools and watch for changes; a failure is kept in `error`."""
        async with self._lock:
            if self._mcp is not None and self._mcp.client.is_connected():
                return
            await self._close()
            mcp = self._build()
            try:
                with anyio.fail_after(CONNECT_TIMEOUT_S):
                    await mcp.__aenter__()
                    self._mcp = mcp
                    await self._refresh()
            except Exception as e:
                self.error = f"{type(e).__name__}: {e}"[:300]
                self._failed_at = time.monotonic()
                log.warning("MCP server unavailable", server=self.name, error=self.error)
                await self._close()
                return
            self.error = None
            self._watcher = asyncio.create_task(self._watch(mcp), name=f"mcp-watch-{self.name}")
            log.info("MCP server ready", server=self.name, tools=sorted(self.definitions))

    async def stop(self) -> None:
        async with self._lock:
            await self._close()

    async def _close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watcher
            self._watcher = None
        mcp, self._mcp = self._mcp, None
        # every hold, not one: a call cancelled inside MCPToolset's own exit (our wall-time limit, a run's
        # tool timeout) can leave its hold behind, and a held session keeps its stuck process alive
        while mcp is not None and mcp.is_running:
            try:
                await mcp.__aexit__(None, None, None)
            except Exception as e:
                log.warning("MCP server did not close cleanly", server=self.name, error=repr(e))
                break
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    async def _refresh(self) -> None:
        assert self._mcp is not None
        tools = await self._mcp.get_tools(_catalog_context())
        self.definitions = {name: tool.tool_def for name, tool in tools.items()}

    async def _on_message(self, message: Any) -> None:
        """A 2025-era session's tools/list_changed notification."""
        from mcp import types as mcp_types

        if isinstance(getattr(message, "root", message), mcp_types.ToolListChangedNotification):
            self._changed.set()

    async def _watch(self, mcp: MCPToolset[Any]) -> None:
        """Relist the tools on every change the server reports, while it stays connected."""
        from mcp.client.subscriptions import ListenNotSupportedError, listen

        try:
            async with listen(mcp.client.session, tools_list_changed=True) as changes:
                async for _ in changes:
                    await self._relist()
        except ListenNotSupportedError:  # an older session: the notifications come to _on_message
            while True:
                await self._changed.wait()
                self._changed.clear()
                await self._relist()
        except Exception as e:  # the connection ended: the next call starts it again
            log.info("MCP server stopped reporting changes", server=self.name, error=repr(e))

    async def _relist(self) -> None:
        try:
            await self._refresh()
        except Exception as e:
            log.warning("MCP server's tools could not be listed again", server=self.name, error=repr(e))
            return
        self.changes += 1
        log.info("MCP server's tools changed", server=self.name, tools=sorted(self.definitions))

    async def connected(self) -> MCPToolset[Any]:
        """The live connection, started again if it ended."""
        mcp = self._mcp
        if (mcp is None or not mcp.client.is_connected()) and time.monotonic() - self._failed_at >= RETRY_S:
            await self.start()
            mcp = self._mcp
        if mcp is None or not mcp.client.is_connected():
            raise RuntimeError(f"the MCP server {self.name} is unavailable: {self.error}")
        return mcp

    async def call(self, name: str, args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]) -> Any:
        mcp = await self.connected()
        if not self.spec.isolated:
            return await mcp.call_tool(name, args, ctx, tool)
        wall = self.spec.limits.wall_s
        try:
            with anyio.fail_after(wall):
                return await mcp.call_tool(name, args, ctx, tool)
        except TimeoutError:
            await self.stop()  # the process is stuck: killed, started again for the next call
            raise ToolStopped(
                f"{self.name}_{name}",
                "wall_s",
                f"the MCP server {self.name} was stopped at its wall-time limit of {wall:g} s",
            ) from None
        except Exception as e:
            if mcp.client.is_connected():
                raise
            await self.stop()
            raise ToolStopped(
                f"{self.name}_{name}",
                "exited",
                f"the MCP server {self.name} exited during the call (isolated: {self.spec.limits})",
            ) from e

    def toolset(self, allowed: frozenset[str] | None) -> AbstractToolset[Any]:
        """The server's tools (or the `allowed` ones) as the model sees them: `<server>_<tool>`."""
        return ServerToolset(self, allowed).prefixed(self.name)


@dataclass
class ServerToolset(AbstractToolset[Any]):
    """A run's view of a shared server: its current tools, marked untrusted, called on its one connection.
    Entering it (each run does) connects nothing: the server's life is the executor's."""

    server: McpServer
    allowed: frozenset[str] | None = None
    include_instructions = False  # read by pydantic-ai's durable MCP wrapper (journal.py): a server's are not used

    @property
    def id(self) -> str | None:
        return f"mcp-{self.server.name}"

    async def get_tools(self, ctx: RunContext[Any]) -> dict[str, ToolsetTool[Any]]:
        mcp = await self.server.connected()
        marks = {UNTRUSTED: True, SIDE_EFFECTS: True} if self.server.spec.side_effects else {UNTRUSTED: True}
        return {
            name: mcp.tool_for_tool_def(replace(td, metadata={**(td.metadata or {}), **marks}), ctx=ctx)
            for name, td in self.server.definitions.items()
            if self.allowed is None or name in self.allowed
        }

    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> Any:
        return await self.server.call(name, tool_args, ctx, tool)


class McpServers:
    """Every declared server, by name."""

    def __init__(self, specs: dict[str, McpServerSpec], allow: Allowlist | None = None) -> None:
        """`allow`: the outbound rules for servers over HTTP (default: AGENTBUS_OUTBOUND_ALLOW)."""
        allow = allow if allow is not None else Allowlist.from_env()
        self.servers = {name: McpServer(name, spec, allow) for name, spec in specs.items()}

    def __getitem__(self, name: str) -> McpServer:
        return self.servers[name]

    def __contains__(self, name: object) -> bool:
        return name in self.servers

    def __iter__(self) -> Iterator[McpServer]:
        return iter(self.servers.values())

    async def start(self) -> None:
        await asyncio.gather(*(s.start() for s in self.servers.values()))

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.servers.values()))
