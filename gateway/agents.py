"""GET /v1/agents: what a conversation, task or research job may name (the executor's catalog)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, get
from litestar.datastructures import State

from gateway.auth import Tenant
from gateway.state import gateway_of

__all__ = ["Agents", "list_agents"]


class Agents(msgspec.Struct, frozen=True, kw_only=True):
    agents: list[str]
    pipelines: list[str]  # each runs as agent `pipeline:<name>`


@get(
    "/v1/agents",
    tags=["agents"],
    summary="The agents and pipelines a conversation, task or research job may name",
)
async def list_agents(request: Request[Any, Any, Any], state: State, tenant: Tenant) -> Agents:
    gw = gateway_of(state)
    catalog = await gw.agents.catalog(gw.trace(tenant, request))
    return Agents(agents=catalog.agents, pipelines=catalog.pipelines)
