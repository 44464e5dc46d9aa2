"""Which agents exist: the executor's catalog (ab.executor.svc.agents), cached briefly, so a conversation,
task, pipeline run or research job naming an agent that does not exist is refused when it is created (422
unknown_agent), and one the tenant may not run (`TenantSettings.agents`) is refused too (403 forbidden).

The internal research agents are not in the catalog's `agents`: a conversation, task or pipeline naming one
is told there is no such agent (422); only a research job may name one (`internal=True`), to answer its
sub-questions. The executor checks the same when the run starts (actors/executor/tenant_agents.py)."""

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

    async def check(
        self,
        trace: Trace,
        *,
        agent: str | None = None,
        pipeline: str | None = None,
        allowed: tuple[str, ...] | None = None,
        internal: bool = False,
    ) -> None:
        """ApiError(unknown_agent), listing what exists, unless `agent` (or `pipeline:<name>`) and `pipeline`
        exist (`internal`: an internal research agent counts too); ApiError(forbidden) if one is not in
        `allowed` (the tenant's agents; None: all; an internal one is never refused by it)."""
        if agent is not None and agent.startswith(PIPELINE_PREFIX):
            pipeline = agent.removeprefix(PIPELINE_PREFIX)
            agent = None
        if agent is None and pipeline is None:
            return
        catalog = await self.catalog(trace)
        if not _known(catalog, agent, pipeline, internal):
            catalog = await self.catalog(trace, refresh=True)
        if not _known(catalog, agent, pipeline, internal):
            what = (
                f"agent {agent!r}" if agent is not None and not _known(catalog, agent, None, internal) else
                f"pipeline {pipeline!r}"
            )  # fmt: skip
            raise ApiError(
                ErrorCode.UNKNOWN_AGENT,
                f"there is no {what}: name one of the agents (or pipelines) listed in details",
                {"agents": _allowed(catalog.agents, allowed), "pipelines": _allowed(catalog.pipelines, allowed, True)},
            )
        names = ([agent] if agent is not None and agent not in catalog.internal else []) + (
            [PIPELINE_PREFIX + pipeline] if pipeline is not None else []
        )
        refused = [n for n in names if allowed is not None and n not in allowed]
        if refused:
            raise ApiError(
                ErrorCode.FORBIDDEN,
                f"this tenant's keys may not run {' or '.join(repr(n) for n in refused)}",
                {"agents": _allowed(catalog.agents, allowed), "pipelines": _allowed(catalog.pipelines, allowed, True)},
            )

    async def allowed(self, trace: Trace, allowed: tuple[str, ...] | None) -> AgentCatalog:
        """The catalog as the tenant sees it: only the agents and pipelines it may run, no internal ones."""
        catalog = await self.catalog(trace)
        return AgentCatalog(
            agents=_allowed(catalog.agents, allowed), pipelines=_allowed(catalog.pipelines, allowed, pipelines=True)
        )


def _known(catalog: AgentCatalog, agent: str | None, pipeline: str | None, internal: bool) -> bool:
    agents = catalog.agents + catalog.internal if internal else catalog.agents
    return (agent is None or agent in agents) and (pipeline is None or pipeline in catalog.pipelines)


def _allowed(names: list[str], allowed: tuple[str, ...] | None, pipelines: bool = False) -> list[str]:
    """The names the tenant may run (pipelines are allowed as `pipeline:<name>`)."""
    if allowed is None:
        return names
    prefix = PIPELINE_PREFIX if pipelines else ""
    return [n for n in names if prefix + n in allowed]
