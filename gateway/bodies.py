"""What the HTTP API takes and returns, where it differs from the bus schemas."""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.conversation import Policy, StoredMessage
from schemas.fields import AgentName, Metadata, Prompt

__all__ = ["ContextBody", "NewConversation", "NewMessage", "TurnReply"]


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


class ContextBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    context: dict[str, object]


class TurnReply(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    message: StoredMessage
    model: str
    offline: bool  # true: no LLM provider is configured and the offline model answered
