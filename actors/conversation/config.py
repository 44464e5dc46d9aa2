"""Conversation actor settings, from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass

from actors._postgres import database_url

__all__ = ["ConversationConfig"]


@dataclass(frozen=True, slots=True)
class ConversationConfig:
    database_url: str
    default_agent: str = "assistant"

    @classmethod
    def from_env(cls) -> ConversationConfig:
        return cls(database_url=database_url(), default_agent=os.environ.get("AGENTBUS_DEFAULT_AGENT", "assistant"))
