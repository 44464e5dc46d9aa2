"""What every agent run's tools can reach: its ids, its application state, and the bus calls behind
its source tools and sub-agent hand-offs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = ["RunDeps"]


@dataclass(frozen=True, slots=True)
class RunDeps:
    run_id: str
    tenant: str
    context: dict[str, object] | None  # sidekick application state; None for other patterns
    depth: int = 0  # how many subagent hand-offs above this run
    subagents: tuple[str, ...] = ()  # the agents this one may hand a sub-problem to
    max_depth: int = 2
    subrun: Callable[[str, str, int], Awaitable[str]] | None = None  # (agent, task, tokens used) -> the answer
    search: Callable[[str], Awaitable[str]] | None = None  # query -> the tenant's matching documents, as JSON
    fetch: Callable[[str], Awaitable[str]] | None = None  # url -> the page's text, as JSON
    sources: frozenset[str] | None = None  # source tools this run may use (documents, web); None: all it has
