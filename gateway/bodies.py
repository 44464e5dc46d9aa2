"""What the HTTP API takes and returns, where it differs from the bus schemas."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.approvals import Approval
from schemas.conversation import Policy, StoredMessage
from schemas.fields import AgentName, Metadata, Prompt

__all__ = ["ContextBody", "NewConversation", "NewMessage", "SteerBody", "TurnReply"]


class NewConversation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pattern: Literal["chatbot", "sidekick"] = "chatbot"
    agent: AgentName | None = None
    context: dict[str, object] = {}
    policy: Policy = Policy.ENQUEUE
    metadata: Metadata = {}


class NewMessage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    message: Prompt
    stream: bool = False  # true: answer with server-sent events of the run's output
    metadata: Metadata = {}


class SteerBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/runs/{id}/messages: a user message for a run still going; `message_id` makes a retry safe."""

    content: Prompt
    message_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,100}$")] | None = None  # made up if absent


class ContextBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    context: dict[str, object]


class TurnReply(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    message: StoredMessage
    model: str
    offline: bool  # true: no LLM provider is configured and the offline model answered


class TurnWaiting(msgspec.Struct, frozen=True, kw_only=True):
    """A turn sent without `stream` whose run parked before it answered (202): it waits for the approvals
    (decide them at /v1/approvals) or the events named. The reply is then on the run's events
    (/v1/runs/{run_id}/events) and stored in the conversation once it completes."""

    run_id: str
    status: Literal["waiting"] = "waiting"
    approvals: list[Approval]
    waits: list[str]  # the tool call ids of the run's wait_for_event calls
