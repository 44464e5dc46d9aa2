"""From pydantic-ai's deferred tool calls to a park, and from a park's decisions back to pydantic-ai.

A run parks when the agent run ends with `DeferredToolRequests`: `approvals` are the calls that need a
person (each becomes an `Approval`, bound to that call: its tool, its arguments as the model wrote them
and their SHA-256), `calls` the `wait_for_event` calls (each an event wait). It goes on as a new
pydantic-ai run over the stored messages with `DeferredToolResults`: an approval runs the call (with the
edited arguments for an edit), a denial or an expiry gives the model the reason instead, and an event
wait returns what it got. pydantic-ai runs every call of the step that needed nothing before parking.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic_ai import DeferredToolRequests, DeferredToolResults, ToolApproved, ToolDenied
from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter

from actors.executor.limits import quoted_event
from actors.executor.park_store import Resumable
from bus.headers import new_id
from schemas.approvals import Approval, ApprovalStatus, CallResolved
from schemas.runs import RunRequest

__all__ = ["DENIED", "Parked", "Resumption", "approvals_of", "event_result", "resumption"]

DENIED = "The tool call was denied."


@dataclass(frozen=True, slots=True)
class Parked:
    """How an agent run that did not end stopped: the calls it waits for and every message so far."""

    requests: DeferredToolRequests
    messages: bytes  # pydantic-ai JSON
    base: int  # how many of them are the history the run started from


@dataclass(frozen=True, slots=True)
class Resumption:
    """What a parked run goes on from (agent_run.run_agent's `resume`)."""

    messages: list[ModelMessage]
    base: int
    results: DeferredToolResults
    park: int


def approvals_of(
    requests: DeferredToolRequests, req: RunRequest, *, agent: str, ttl_s: float | None, now: datetime | None = None
) -> list[Approval]:
    """One pending approval per call that needs one, bound to that call (tool, arguments, their hash)."""
    now = now or datetime.now(UTC)
    expires = now + timedelta(seconds=ttl_s) if ttl_s else None
    out = []
    for call in requests.approvals:
        args = call.args_as_json_str()
        out.append(
            Approval(
                id=f"apr_{new_id()}",
                tenant="",  # the store's column; the record read back has it
                run_id=req.run_id,
                tool_call_id=call.tool_call_id,
                tool_name=call.tool_name,
                args=args,
                args_sha256=hashlib.sha256(args.encode()).hexdigest(),
                agent=agent,
                conversation_id=req.conversation_id,
                task_id=req.task_id,
                parent_run_id=req.parent_run_id,
                created_at=now,
                expires_at=expires,
            )
        )
    return out


def resumption(resumable: Resumable) -> Resumption:
    """The park's decisions as pydantic-ai's DeferredToolResults, with the messages to go on from."""
    approvals: dict[str, bool | ToolApproved | ToolDenied] = {}
    for a in resumable.approvals:
        match a.status:
            case ApprovalStatus.APPROVED:
                approvals[a.tool_call_id] = ToolApproved()
            case ApprovalStatus.EDITED:
                approvals[a.tool_call_id] = ToolApproved(override_args=json.loads(a.edited_args or "{}"))
            case ApprovalStatus.DENIED | ApprovalStatus.EXPIRED | ApprovalStatus.WITHDRAWN:
                approvals[a.tool_call_id] = ToolDenied(a.reason or DENIED)
            case ApprovalStatus.PENDING:  # the store resumes only a park whose calls are all decided (or cancelled)
                raise ValueError(f"approval {a.id} is still pending")
    return Resumption(
        messages=ModelMessagesTypeAdapter.validate_json(resumable.messages),
        base=resumable.base,
        results=DeferredToolResults(approvals=approvals, calls=dict(resumable.results)),
        park=resumable.park,
    )


def event_result(resolved: CallResolved) -> str:
    """What `wait_for_event` returns to the model: the event as quoted JSON data (never instructions), or
    that it timed out."""
    if resolved.timed_out or resolved.event is None:
        return "No matching event arrived before the wait timed out."
    return quoted_event(f"An event arrived on {resolved.subject or 'the bus'}.", resolved.event)
