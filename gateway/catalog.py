"""Which agents exist: the executor's catalog (ab.executor.svc.agents), cached briefly, so a conversation,
task or research job naming an agent that does not exist is refused when it is created (422 unknown_agent)."""

from __future__ import annotations

import time

from bus import subjects
from bus.client import Bus
from bus.errors import BusError
from bus.headers import Trace
from gateway.errors import ApiError
from schemas.agents import AgentCatalog, ListAgents
from schemas.errors import ErrorCode

__all__ = ["AgentCatalogCache"]

PIPELINE_PREFIX = "pipeline:"


class AgentCatalogCache:
    """The executor's catalog, asked again after `ttl_s`, and at once when a name is not in it (a new agents
    file is seen without waiting). While the executor does not answer, a name it listed before still passes."""

    def __init__(self, bus: Bus, ttl_s: float = 30.0) -> None:
        self.bus = bus
        self.ttl_s = ttl_s
        self._catalog: AgentCatalog | None = None
        self._fresh_until = 0.0

    async def catalog(self, trace: Trace, *, refresh: bool = False) -> AgentCatalog:
        if self._catalog is not None and not refresh and time.monotonic() < self._fresh_until:
            return self._catalog
        try:
            self._catalog = await self.bus.request(
                subjects.service(subjects.ActorName.EXECUTOR, "agents"), ListAgents(), AgentCatalog, trace=trace
            )
        except BusError:
            if self._catalog is None:
                raise
            return self._catalog
        self._fresh_until = time.monotonic() + self.ttl_s
        return self._catalog

    async def check(self, trace: Trace, *, agent: str | None = None, pipeline: str | None = None) -> None:
        """ApiError(unknown_agent), listing what exists, unless `agent` (or `pipeline:<name>`) and `pipeline` exist."""
        if agent is not None and agent.startswith(PIPELINE_PREFIX):
            pipeline = agent.removeprefix(PIPELINE_PREFIX)
            agent = None
        if agent is None and pipeline is None:
            return
        catalog = await self.catalog(trace)
        if _known(catalog, agent, pipeline):
            return
        catalog = await self.catalog(trace, refresh=True)
        if _known(catalog, agent, pipeline):
            return
        what = f"agent {agent!r}" if agent is not None and agent not in catalog.agents else f"pipeline {pipeline!r}"
        raise ApiError(
            ErrorCode.UNKNOWN_AGENT,
            f"there is no {what}: name one of the agents (or pipelines) listed in details",
            {"agents": catalog.agents, "pipelines": catalog.pipelines},
        )


def _known(catalog: AgentCatalog, agent: str | None, pipeline: str | None) -> bool:
    return (agent is None or agent in catalog.agents) and (pipeline is None or pipeline in catalog.pipelines)
