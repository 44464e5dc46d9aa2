"""Gateway settings, from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from bus.secrets import SecretBox

__all__ = ["GatewayConfig", "cors_origins"]

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
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API (CORS); none by default
    secrets: SecretBox = field(default_factory=SecretBox.from_env)  # seals the kept idempotent answers

    @classmethod
    def from_env(cls) -> GatewayConfig:
        actors = os.environ.get("AGENTBUS_ACTORS")
        return cls(
            host=os.environ.get("AGENTBUS_HOST", "127.0.0.1"),
            port=int(os.environ.get("AGENTBUS_PORT", "8000")),
            reply_timeout_s=float(os.environ.get("AGENTBUS_REPLY_TIMEOUT", "120")),
            max_body_bytes=int(os.environ.get("AGENTBUS_MAX_BODY", str(1 << 20))),
            actors=tuple(a for a in actors.split(",") if a) if actors else DEFAULT_ACTORS,
            cors_origins=cors_origins(os.environ),
        )


def cors_origins(env: Mapping[str, str]) -> tuple[str, ...]:
    """AGENTBUS_CORS_ORIGINS (or the older CORS_ORIGINS): comma-separated origins, `*` for any."""
    text = env.get("AGENTBUS_CORS_ORIGINS") or env.get("CORS_ORIGINS") or ""
    return tuple(o.strip().rstrip("/") for o in text.split(",") if o.strip())
