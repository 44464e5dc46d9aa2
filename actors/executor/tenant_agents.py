"""Which agents a run may name: the tenant's allowed agents (`TenantSettings.agents`), and the internal
research agents only under a research job.

Checked by the executor when a run starts, whoever published it (the gateway checks the same when a
conversation, task, pipeline run or research job is created). What the platform starts for itself says
so in its command subject (`subjects.RunOrigin`): a pipeline's steps and a run's hand-offs (`sub`) were
chosen by the agents file for a run already checked, so they are not checked again; a research job's
sub-runs (`research`) may run the internal research agents, and any other agent the tenant may run.
A pipeline is named `pipeline:<name>` in the tenant's list, as a run names it.
"""

from __future__ import annotations

from collections.abc import Collection

from bus.subjects import RunOrigin
from schemas.errors import ErrorCode, ErrorReply

__all__ = ["agent_refused"]


def agent_refused(
    agent: str, *, allowed: tuple[str, ...] | None, origin: RunOrigin | None, internal: Collection[str]
) -> ErrorReply | None:
    """`forbidden` if a run of `agent` may not start (None: it may)."""
    if origin is RunOrigin.SUBRUN:
        return None
    if agent in internal:
        if origin is RunOrigin.RESEARCH:
            return None
        message = f"{agent!r} is an internal research agent: only a research job's sub-runs run it"
        return ErrorReply(code=ErrorCode.FORBIDDEN, message=message, details={"agent": agent})
    if allowed is not None and agent not in allowed:
        message = f"this tenant's keys may not run {agent!r}"
        return ErrorReply(code=ErrorCode.FORBIDDEN, message=message, details={"agent": agent})
    return None
