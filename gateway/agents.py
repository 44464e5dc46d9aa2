"""GET /v1/agents: what a conversation, task or research job may name (the executor's catalog)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.datastructures import State

from gateway.auth import Tenant
from gateway.state import gateway_of
from gateway.views import full_json

__all__ = ["list_agents"]


@get(
    "/v1/agents",
    tags=["agents"],
    summary="The agents and pipelines a conversation, task or research job may name",
)
async def list_agents(request: Request[Any, Any, Any], state: State, tenant: Tenant) -> Response[bytes]:
    gw = gateway_of(state)
    catalog = await gw.agents.catalog(gw.trace(tenant, request))
    return Response(
        full_json({"agents": catalog.agents, "pipelines": catalog.pipelines}), media_type="application/json"
    )
