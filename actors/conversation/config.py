"""Conversation actor settings, from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass

from actors._postgres import database_url

__all__ = ["ConversationConfig"]

MAX_PAGE_BYTES = 768 * 1024  # a history page stays well under NATS's default 1 MB max_payload


@dataclass(frozen=True, slots=True)
class ConversationConfig:
    database_url: str
    default_agent: str = "assistant"
    # a RunRequest carries a history up to this size inline; a larger one goes by reference
    history_inline_bytes: int = 64 * 1024
    # bytes of history one page of ab.conversation.svc.history carries (as encoded, base64)
    history_page_bytes: int = 256 * 1024

    def __post_init__(self) -> None:
        if not 64 <= self.history_page_bytes <= MAX_PAGE_BYTES:
            raise ValueError(f"history_page_bytes must be between 64 and {MAX_PAGE_BYTES}")

    @classmethod
    def from_env(cls) -> ConversationConfig:
        return cls(
            database_url=database_url(),
            default_agent=os.environ.get("AGENTBUS_DEFAULT_AGENT", "assistant"),
            history_inline_bytes=int(os.environ.get("AGENTBUS_HISTORY_INLINE_BYTES", str(64 * 1024))),
            history_page_bytes=int(os.environ.get("AGENTBUS_HISTORY_PAGE_BYTES", str(256 * 1024))),
        )
