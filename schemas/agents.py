"""The executor's catalog: which agents and pipelines a conversation, task or research job may name."""

from __future__ import annotations

from schemas._base import Message
from schemas.errors import ErrorReply

__all__ = ["AgentCatalog", "CatalogReply", "ListAgents"]


class ListAgents(Message, frozen=True, kw_only=True, tag="list_agents"):
    """ab.executor.svc.agents"""


class AgentCatalog(Message, frozen=True, kw_only=True, tag="agent_catalog"):
    agents: list[str]  # sorted
    pipelines: list[str] = []  # sorted; each runs as agent `pipeline:<name>`
    # sorted; the internal research agents: a research job may name one to answer its sub-questions,
    # a conversation, task or pipeline none (they are not in `agents`)
    internal: list[str] = []


CatalogReply = AgentCatalog | ErrorReply
