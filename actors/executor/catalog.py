"""ab.executor.svc.agents: the agents and pipelines this executor runs, so the gateway refuses unknown ones;
the internal research agents are listed apart (only a research job runs them)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

from bus.actor import Endpoint
from bus.headers import Trace
from schemas._base import Message
from schemas.agents import AgentCatalog, ListAgents

__all__ = ["catalog_endpoint"]


def catalog_endpoint(
    agents: Callable[[], Iterable[str]], pipelines: Callable[[], Iterable[str]], *, internal: Collection[str] = ()
) -> Endpoint[ListAgents]:
    """The endpoint; `agents` and `pipelines` are read on every request (they are loaded at start)."""

    async def answer(_: ListAgents, __: Trace) -> Message:
        names = set(agents())
        return AgentCatalog(
            agents=sorted(names - set(internal)), pipelines=sorted(pipelines()), internal=sorted(names & set(internal))
        )

    return Endpoint("agents", ListAgents, answer)
