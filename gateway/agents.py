"""GET /v1/agents: what a conversation, task or research job may name (the executor's catalog, only what the
tenant may run: `TenantSettings.agents`)."""

from __future__ import annotations

import msgspec
from litestar import get

from gateway.caller import Caller

__all__ = ["Agents", "list_agents"]


class Agents(msgspec.Struct, frozen=True, kw_only=True):
    agents: list[str]
    pipelines: list[str]  # each runs as agent `pipeline:<name>`


@get(
    "/v1/agents",
    tags=["agents"],
    summary="The agents and pipelines the tenant's conversations, tasks and research jobs may name",
)
async def list_agents(caller: Caller) -> Agents:
    gw = caller.gateway
    catalog = await gw.agents.allowed(caller.trace, gw.tenants.get(caller.tenant).agents)
    return Agents(agents=catalog.agents, pipelines=catalog.pipelines)
