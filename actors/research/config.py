"""Research actor settings, from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass

from actors._postgres import database_url

__all__ = ["ResearchConfig"]


@dataclass(frozen=True, slots=True)
class ResearchConfig:
    database_url: str
    max_document_chars: int = 2_000_000

    @classmethod
    def from_env(cls) -> ResearchConfig:
        return cls(
            database_url=database_url(),
            max_document_chars=int(os.environ.get("AGENTBUS_MAX_DOCUMENT_CHARS", "2000000")),
        )
