"""Executor settings, from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from actors._postgres import database_url

__all__ = ["ExecutorConfig"]


@dataclass(frozen=True, slots=True)
class ExecutorConfig:
    database_url: str
    agents_file: Path | None = None  # TOML agent definitions; None: only the built-in `assistant`
    default_model: str | None = None  # a pydantic-ai model string for agents that name none
    offline: bool = False  # force the offline model for every provider model (tests, demos)
    max_concurrent_runs: int = 32
    max_subagent_depth: int = 2  # how deep agents may hand sub-problems to other agents

    @classmethod
    def from_env(cls) -> ExecutorConfig:
        agents = os.environ.get("AGENTBUS_AGENTS_FILE")
        return cls(
            database_url=database_url(),
            agents_file=Path(agents) if agents else None,
            default_model=os.environ.get("AGENTBUS_MODEL") or None,
            offline=os.environ.get("AGENTBUS_OFFLINE", "") not in ("", "0", "false"),
            max_concurrent_runs=int(os.environ.get("AGENTBUS_MAX_RUNS", "32")),
            max_subagent_depth=int(os.environ.get("AGENTBUS_SUBAGENT_DEPTH", "2")),
        )
