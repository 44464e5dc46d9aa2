"""Gateway settings, from the environment."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from bus.secrets import SecretBox

__all__ = ["GatewayConfig", "cors_origins", "is_loopback"]

DEFAULT_ACTORS = ("conversation", "executor", "scheduler", "trigger", "notifier", "research")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    reply_timeout_s: float = 120.0  # a non-streamed turn answers 504 after this
    max_body_bytes: int = 1 << 20
    # how long an idle keep-alive connection stays open: longer than a client's or load balancer's pool
    # keeps one (uvicorn's 5 s default races pooled clients: a request sent as the server closes is lost)
    keep_alive_s: int = 75
    idempotency_ttl_s: float = 24 * 3600.0
    actors: tuple[str, ...] = DEFAULT_ACTORS  # what /health expects to answer
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API (CORS); none by default
    secrets: SecretBox = field(default_factory=SecretBox.from_env)  # seals the kept idempotent answers
    auth_off: bool = False  # AGENTBUS_AUTH=off: local development only, every request acts for `auth_tenant`
    auth_tenant: str = "dev"
    ws_token_ttl_s: float = 60.0  # how long a WebSocket token from POST /v1/ws-tokens may wait to be used
    # requests per minute per API key and per webhook task, shared by every replica (gateway/ratelimit.py);
    # 0: off. Built in code (tests, embedding) it is off; the service (`from_env`) defaults to 100 and 60.
    rate_limit: int = 0
    webhook_rate_limit: int = 0
    metrics_token: str | None = None  # AGENTBUS_METRICS_TOKEN: the bearer /metrics needs (gateway/metrics.py)

    @classmethod
    def from_env(cls) -> GatewayConfig:
        actors = os.environ.get("AGENTBUS_ACTORS")
        auth = os.environ.get("AGENTBUS_AUTH", os.environ.get("AUTH_ENABLED", "on")).strip().lower()
        return cls(
            host=os.environ.get("AGENTBUS_HOST", "127.0.0.1"),
            port=int(os.environ.get("AGENTBUS_PORT", "8000")),
            reply_timeout_s=float(os.environ.get("AGENTBUS_REPLY_TIMEOUT", "120")),
            max_body_bytes=int(os.environ.get("AGENTBUS_MAX_BODY", str(1 << 20))),
            keep_alive_s=int(os.environ.get("AGENTBUS_KEEP_ALIVE", "75")),
            actors=tuple(a for a in actors.split(",") if a) if actors else DEFAULT_ACTORS,
            cors_origins=cors_origins(os.environ),
            auth_off=auth in ("off", "false", "0", "no"),
            auth_tenant=os.environ.get("AGENTBUS_AUTH_TENANT", "dev"),
            rate_limit=int(os.environ.get("AGENTBUS_RATE_LIMIT", "100")),
            webhook_rate_limit=int(os.environ.get("AGENTBUS_WEBHOOK_RATE_LIMIT", "60")),
            metrics_token=os.environ.get("AGENTBUS_METRICS_TOKEN") or None,
        )

    def refusal(self) -> str | None:
        """Why the gateway must not start with this config (None: it may)."""
        if self.auth_off and not is_loopback(self.host):
            return (
                f"AGENTBUS_AUTH=off is for local development only: the gateway listens on {self.host}, "
                "not on loopback (set AGENTBUS_HOST=127.0.0.1, or turn authentication on)"
            )
        return None


def cors_origins(env: Mapping[str, str]) -> tuple[str, ...]:
    """AGENTBUS_CORS_ORIGINS (or the older CORS_ORIGINS): comma-separated origins, `*` for any."""
    text = env.get("AGENTBUS_CORS_ORIGINS") or env.get("CORS_ORIGINS") or ""
    return tuple(o.strip().rstrip("/") for o in text.split(",") if o.strip())
