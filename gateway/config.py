"""Gateway settings, from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["GatewayConfig"]

DEFAULT_ACTORS = ("conversation", "executor", "scheduler", "trigger", "notifier", "research")


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    reply_timeout_s: float = 120.0  # a non-streamed turn answers 504 after this
    max_body_bytes: int = 1 << 20
    key_cache_s: float = 30.0  # how long a resolved API key is trusted without asking NATS again
    idempotency_ttl_s: float = 24 * 3600.0
    actors: tuple[str, ...] = DEFAULT_ACTORS  # what /health expects to answer
    # requests per minute per API key and per webhook task, shared by every replica (gateway/ratelimit.py);
    # 0: off. Built in code (tests, embedding) it is off; the service (`from_env`) defaults to 100 and 60.
    rate_limit: int = 0
    webhook_rate_limit: int = 0

    @classmethod
    def from_env(cls) -> GatewayConfig:
        actors = os.environ.get("AGENTBUS_ACTORS")
        return cls(
            host=os.environ.get("AGENTBUS_HOST", "127.0.0.1"),
            port=int(os.environ.get("AGENTBUS_PORT", "8000")),
            reply_timeout_s=float(os.environ.get("AGENTBUS_REPLY_TIMEOUT", "120")),
            max_body_bytes=int(os.environ.get("AGENTBUS_MAX_BODY", str(1 << 20))),
            actors=tuple(a for a in actors.split(",") if a) if actors else DEFAULT_ACTORS,
            rate_limit=int(os.environ.get("AGENTBUS_RATE_LIMIT", "100")),
            webhook_rate_limit=int(os.environ.get("AGENTBUS_WEBHOOK_RATE_LIMIT", "60")),
        )
