"""The audit log: one event per change a key made (or the `agentbus` command made), on `ab.audit.<tenant>.<action>`."""

from __future__ import annotations

import enum

from schemas._base import Message

__all__ = ["AuditAction", "AuditEvent"]


class AuditAction(enum.StrEnum):
    CREATED = "created"
    CHANGED = "changed"
    DELETED = "deleted"
    EXECUTED = "executed"  # started a turn, a run, a task run, a pipeline, a research job, a tool call
    REVOKED = "revoked"  # a key
    ROTATED = "rotated"  # a key: a new one made in its place
    DECIDED = "decided"  # a tool call waiting for approval: approved, denied or edited (`detail` says which)


class AuditEvent(Message, frozen=True, kw_only=True, tag="audit"):
    """Who (`key_id`; `cli` for the `agentbus` command) did what (`action` on `route` with `target`), when."""

    at: float  # Unix time
    tenant: str
    key_id: str
    action: AuditAction
    method: str = ""  # the HTTP request's, empty for the `agentbus` command
    route: str = ""  # the path template, e.g. /v1/tasks/{task_id}
    path: str = ""  # the path itself, ids filled in
    target: str = ""  # what was acted on: the path's last id, or the id the answer created
    status: int = 0
    correlation_id: str = ""
    detail: dict[str, str] = {}  # what the route shows beside the target: a decision's tool, hash, outcome
