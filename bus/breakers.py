"""Where model deployments' circuit breakers live: one JetStream KV bucket every executor replica shares
(and the gateway's /health reads). The transitions are the executor's (actors/executor/breaker.py)."""

from __future__ import annotations

import base64

import msgspec

from bus.client import Bus
from schemas.models import BreakerState

__all__ = ["BUCKET", "deployment_key", "read_breakers"]

BUCKET = "ab_model_breakers"


def deployment_key(deployment: str) -> str:
    """A KV key for a deployment name (which holds ':', '/', '@'): url-safe base64, unpadded."""
    return base64.urlsafe_b64encode(deployment.encode()).decode().rstrip("=")


def _deployment(key: str) -> str:
    return base64.urlsafe_b64decode(key + "=" * (-len(key) % 4)).decode()


async def read_breakers(bus: Bus) -> dict[str, BreakerState]:
    """Every deployment's breaker that has ever left the closed state, by deployment name."""
    entries = await bus.kv_entries(BUCKET)
    return {_deployment(key): msgspec.json.decode(value, type=BreakerState) for key, value in entries.items()}
