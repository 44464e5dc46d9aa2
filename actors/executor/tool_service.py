"""ab.executor.svc.tools and ab.executor.svc.call_tool: the tools each agent can call, and one call
of one tool for a tenant (to test a tool), answered by the executor that holds the MCP connections."""

from __future__ import annotations

from collections.abc import Callable

from actors.executor.deps import RunDeps
from actors.executor.limits import RunLimits
from actors.executor.tools import ToolRegistry
from bus.actor import Endpoint
from bus.headers import Trace
from schemas._base import Message
from schemas.tools import CallTool, ListTools

__all__ = ["tool_endpoints"]


def tool_endpoints(
    registry: Callable[[], ToolRegistry], deps: Callable[[Trace], RunDeps]
) -> tuple[Endpoint[ListTools], Endpoint[CallTool]]:
    """`registry` is read on every request (it is built at start); `deps` gives a call its tenant's
    source tools (search_documents, fetch_url)."""

    async def catalog(_: ListTools, __: Trace) -> Message:
        return await registry().catalog()

    async def call(request: CallTool, trace: Trace) -> Message:
        return await registry().call(request.name, bytes(request.args), deps(trace), RunLimits())

    return Endpoint("tools", ListTools, catalog), Endpoint("call_tool", CallTool, call)
