"""GET /v1/agents: what a conversation, task or research job may name (the executor's catalog)."""

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
    summary="The agents and pipelines a conversation, task or research job may name",
)
async def list_agents(caller: Caller) -> Agents:
    catalog = await caller.gateway.agents.catalog(caller.trace)
    return Agents(agents=catalog.agents, pipelines=catalog.pipelines)
