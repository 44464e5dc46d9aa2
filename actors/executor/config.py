"""Executor settings, from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from actors._postgres import database_url
from actors.executor.breaker import BreakerConfig

__all__ = ["ExecutorConfig"]


@dataclass(frozen=True, slots=True)
class ExecutorConfig:
    database_url: str
    agents_file: Path | None = None  # TOML agent definitions; None: only the built-in `assistant`
    default_model: str | list[str] | None = None  # agents naming none: AGENTBUS_MODEL (a chain: comma-separated)
    offline: bool = False  # force the offline model for every provider model (tests, demos)
    max_concurrent_runs: int = 32
    fair_share_retry_s: float = 1.0  # a run its tenant's share does not admit yet is offered again after this
    max_subagent_depth: int = 2  # how deep agents may hand sub-problems to other agents
    max_output_tokens: int = 4096  # the cap on one model response, for agents that set none
    model_timeout_s: float = 120.0  # one model request, all its attempts, for agents that set none
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    approval_ttl_s: float | None = 86_400.0  # an approval not decided by then is denied (None: never expires)
    expiry_interval_s: float = 1.0  # how often expired approvals are looked for

    @classmethod
    def from_env(cls) -> ExecutorConfig:
        agents = os.environ.get("AGENTBUS_AGENTS_FILE")
        model_timeout_s = float(os.environ.get("AGENTBUS_MODEL_TIMEOUT", "120"))
        return cls(
            database_url=database_url(),
            agents_file=Path(agents) if agents else None,
            default_model=_chain(os.environ.get("AGENTBUS_MODEL", "")),
            offline=os.environ.get("AGENTBUS_OFFLINE", "") not in ("", "0", "false"),
            max_concurrent_runs=int(os.environ.get("AGENTBUS_MAX_RUNS", "32")),
            fair_share_retry_s=float(os.environ.get("AGENTBUS_FAIR_SHARE_RETRY", "1.0")),
            max_subagent_depth=int(os.environ.get("AGENTBUS_SUBAGENT_DEPTH", "2")),
            max_output_tokens=int(os.environ.get("AGENTBUS_MAX_OUTPUT_TOKENS", "4096")),
            model_timeout_s=model_timeout_s,
            approval_ttl_s=float(os.environ.get("AGENTBUS_APPROVAL_TTL_S", "86400")) or None,
            breaker=BreakerConfig(
                failures=int(os.environ.get("AGENTBUS_BREAKER_FAILURES", "3")),
                cooldown_s=float(os.environ.get("AGENTBUS_BREAKER_COOLDOWN", "30")),
                probe_timeout_s=model_timeout_s + 5.0,  # a probe outlives no request; one never reported is given up
            ),
        )


def _chain(value: str) -> str | list[str] | None:
    models = [m.strip() for m in value.split(",") if m.strip()]
    return None if not models else models[0] if len(models) == 1 else models
