"""Counts for GET /v1/stats, each asked of the actor that owns the rows: ab.conversation.svc.count,
ab.scheduler.svc.count and ab.executor.svc.run_counts (tokens and cost come from ab.executor.svc.usage)."""

from __future__ import annotations

from datetime import datetime

from schemas._base import Message

__all__ = ["ConversationCount", "CountConversations", "CountRuns", "CountTasks", "RunCount", "TaskCount"]


class CountConversations(Message, frozen=True, kw_only=True, tag="count_conversations"):
    """How many conversations the tenant has."""


class ConversationCount(Message, frozen=True, kw_only=True, tag="conversation_count"):
    total: int = 0


class CountTasks(Message, frozen=True, kw_only=True, tag="count_tasks"):
    """How many tasks the tenant has, and how many of them are enabled."""


class TaskCount(Message, frozen=True, kw_only=True, tag="task_count"):
    total: int = 0
    enabled: int = 0


class CountRuns(Message, frozen=True, kw_only=True, tag="count_runs"):
    """The tenant's runs by status, and how many were created at or after `since`."""

    since: datetime | None = None


class RunCount(Message, frozen=True, kw_only=True, tag="run_count"):
    by_status: dict[str, int] = {}  # every status a run has, with how many runs have it now
    since: int = 0  # runs created at or after the query's `since` (all of them without one)
