"""What the HTTP API takes and returns, where it differs from the bus schemas."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.conversation import Policy, StoredMessage

__all__ = ["ContextBody", "NewConversation", "NewMessage", "TurnReply"]

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=100_000)]
Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class NewConversation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pattern: Literal["chatbot", "sidekick"] = "chatbot"
    agent: Name | None = None
    context: dict[str, object] = {}
    policy: Policy = Policy.ENQUEUE
    metadata: dict[str, str] = {}


class NewMessage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    message: Text
    stream: bool = False  # true: answer with server-sent events of the run's output
    metadata: dict[str, str] = {}


class ContextBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    context: dict[str, object]


class TurnReply(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    message: StoredMessage
    model: str
    offline: bool  # true: no LLM provider is configured and the offline model answered
