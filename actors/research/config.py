"""Research actor settings, from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from actors._outbound import Allowlist
from actors._postgres import database_url
from bus.secrets import SecretBox

__all__ = ["ResearchConfig"]


@dataclass(frozen=True, slots=True)
class ResearchConfig:
    database_url: str
    max_document_chars: int = 2_000_000
    allow: Allowlist = field(default_factory=Allowlist)  # private addresses fetch_url may reach anyway
    fetch_max_bytes: int = 1_000_000  # a fetched page is cut here (a PDF over it is refused)
    fetch_timeout_s: float = 20.0
    concurrency: int = 4  # sub-questions of one job running at once
    max_jobs: int = 32  # jobs one replica drives at once
    secrets: SecretBox = field(default_factory=SecretBox.from_env)  # seals the notification secrets at rest

    @classmethod
    def from_env(cls) -> ResearchConfig:
        env = os.environ.get
        return cls(
            database_url=database_url(),
            max_document_chars=int(env("AGENTBUS_MAX_DOCUMENT_CHARS", "2000000")),
            allow=Allowlist.from_env(),
            fetch_max_bytes=int(env("AGENTBUS_FETCH_MAX_BYTES", "1000000")),
            fetch_timeout_s=float(env("AGENTBUS_FETCH_TIMEOUT", "20")),
            concurrency=int(env("AGENTBUS_RESEARCH_CONCURRENCY", "4")),
            max_jobs=int(env("AGENTBUS_RESEARCH_MAX_JOBS", "32")),
        )
