"""Runs that wait for people and events: approvals of tool calls, waits for an event, steering messages.

A run whose model called a tool that needs approval (or `wait_for_event`) *parks*: pydantic-ai ends the
agent run with DeferredToolRequests, the executor stores the messages so far and one `Approval` (or
`EventWait`) per deferred call, marks the run `waiting`, acks its request and frees its slot. Each call is
decided on its own (`ab.executor.svc.decide_approval`, an event, an expiry, a timeout); once every call of
the park is decided the executor sends itself `ResumeRun`, and the run continues from where it parked.
"""

from __future__ import annotations

import enum
from datetime import datetime

from schemas._base import Message, Record

__all__ = [
    "Approval",
    "ApprovalDecided",
    "ApprovalList",
    "ApprovalStatus",
    "ApprovalView",
    "CallResolved",
    "DecideApproval",
    "Decision",
    "GetApproval",
    "ListApprovals",
    "ResumeRun",
    "RunWaiting",
    "SteerRun",
    "Steered",
    "WaitKind",
    "WatchEvent",
    "Watching",
]


class Decision(enum.StrEnum):
    APPROVE = "approve"
    DENY = "deny"
    EDIT = "edit"  # approve with changed arguments (recorded as such)


class ApprovalStatus(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EDITED = "edited"
    EXPIRED = "expired"  # denied by its expiry; the run continued with that denial
    WITHDRAWN = "withdrawn"  # the run ended (cancelled) before it was decided


class WaitKind(enum.StrEnum):
    APPROVAL = "approval"
    EVENT = "event"


class Approval(Record, frozen=True, kw_only=True):
    """One tool call waiting for a person, bound to exactly that call: `args_sha256` is the SHA-256 of
    `args` (the JSON text the model produced, shown as it was) and a decision applies to that call only."""

    id: str  # "<run_id>.<tool_call_id>" made URL-safe: see actors/executor/parking.py
    tenant: str
    run_id: str
    park: int = 1  # which of the run's parks asked it
    tool_call_id: str
    tool_name: str
    args: str  # JSON text, as the model produced it
    args_sha256: str
    agent: str  # the agent that asked
    conversation_id: str | None = None
    task_id: str | None = None
    parent_run_id: str | None = None
    status: ApprovalStatus = ApprovalStatus.PENDING
    created_at: datetime
    expires_at: datetime | None = None
    decided_at: datetime | None = None
    decided_by: str | None = None  # the API key id that decided; "expiry" for an expired one
    reason: str | None = None  # a denial's reason (what the model sees)
    edited_args: str | None = None  # an edit's arguments as JSON text (what the tool ran with)


class RunWaiting(Message, frozen=True, kw_only=True, tag="waiting"):
    """On the run's output (`ab.run.out.<tenant>.<run>`) and as an executor event
    (`ab.executor.evt.<tenant>.<run>.waiting`): the run parked; what it waits for."""

    run_id: str
    approvals: list[Approval] = []
    waits: list[str] = []  # the tool call ids waiting for an event
    task_id: str | None = None
    conversation_id: str | None = None
    parent_run_id: str | None = None


class ResumeRun(Message, frozen=True, kw_only=True, tag="resume_run"):
    """Executor command (`ab.executor.cmd.<tenant>.<run>.resume`): every deferred call of the run's park
    `park` is decided; continue it. Idempotent: a run not parked there (resumed already) is left alone."""

    run_id: str
    park: int  # the park's number (1 for the run's first park): a stale resume of an earlier park is ignored


class CallResolved(Message, frozen=True, kw_only=True, tag="call_resolved"):
    """Executor command (`ab.executor.cmd.<tenant>.<run>.resolve`, from the trigger actor): a `wait_for_event`
    call of the run's park `park` matched an event (`event`, its JSON) or timed out (`timed_out`)."""

    run_id: str
    park: int
    tool_call_id: str
    event: dict[str, object] | None = None
    subject: str | None = None  # the subject the event came on (a webhook's: its trigger event subject)
    timed_out: bool = False


class WatchEvent(Message, frozen=True, kw_only=True, tag="watch_event"):
    """Asked of the trigger actor (`ab.trigger.svc.watch`, by the executor when a run parks on `wait_for_event`;
    idempotent per (run, park, tool call)): resolve the call with the first
    event of the tenant matching `subject` (a pattern under `ab.<area>.evt.<tenant>.`, as a subject
    trigger's) or `webhook_task_id` (that task's webhook), whose JSON fields equal `filter`; or, at
    `expires_at`, with a timeout."""

    run_id: str
    park: int
    tool_call_id: str
    subject: str | None = None
    webhook_task_id: str | None = None
    filter: dict[str, str] = {}
    expires_at: datetime


class Watching(Message, frozen=True, kw_only=True, tag="watching"):
    """The trigger actor's answer to WatchEvent: the wait is stored (and followed until it resolves)."""

    run_id: str
    tool_call_id: str


# --- queries and decisions: ab.executor.svc.<verb> ---------------------------------------------


class ListApprovals(Message, frozen=True, kw_only=True, tag="list_approvals"):
    status: ApprovalStatus | None = ApprovalStatus.PENDING  # None: every status
    run_id: str | None = None
    limit: int = 100


class GetApproval(Message, frozen=True, kw_only=True, tag="get_approval"):
    approval_id: str


class DecideApproval(Message, frozen=True, kw_only=True, tag="decide_approval"):
    """`decided_by` is the caller's API key id (the gateway fills it in, never the body)."""

    approval_id: str
    decision: Decision
    reason: str | None = None
    arguments: dict[str, object] | None = None  # with `edit`: the arguments to run the tool with
    decided_by: str


class ApprovalView(Message, frozen=True, kw_only=True, tag="approval"):
    approval: Approval


class ApprovalList(Message, frozen=True, kw_only=True, tag="approval_list"):
    approvals: list[Approval]


class ApprovalDecided(Message, frozen=True, kw_only=True, tag="approval_decided"):
    """On the run's output: one call was decided (the run resumes once all of its park are)."""

    run_id: str
    approval: Approval


# --- steering: ab.executor.svc.steer, then ab.executor.ctl.steer.<tenant>.<run> to every replica ---


class SteerRun(Message, frozen=True, kw_only=True, tag="steer_run"):
    """Add a user message to a run still going: the agent sees it at its next model request."""

    run_id: str
    content: str
    message_id: str  # the caller's id for it (idempotent: the same id is stored once)


class Steered(Message, frozen=True, kw_only=True, tag="steered"):
    """The reply to SteerRun, and on the run's output once the agent was given the message."""

    run_id: str
    message_id: str
    seq: int  # its place among the run's steering messages (1, 2, …)
    delivered: bool = False  # given to the agent (on the output stream: always True)
