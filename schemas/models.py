"""Model deployments: their circuit breakers (kept in JetStream KV) and the executor's `models` query."""

from __future__ import annotations

import enum

from schemas._base import Message, Record
from schemas.errors import ErrorReply

__all__ = [
    "BreakerPhase",
    "BreakerState",
    "DeploymentCheck",
    "DeploymentStatus",
    "ListModels",
    "ModelList",
    "ModelsReply",
]


class BreakerPhase(enum.StrEnum):
    CLOSED = "closed"  # requests go through
    OPEN = "open"  # refused until `open_until`, then one probe may go
    HALF_OPEN = "half_open"  # one probe is in flight (until `probe_until`); the rest are refused


class BreakerState(Record, frozen=True, kw_only=True):
    """One model deployment's circuit breaker, shared by every executor replica (KV bucket `ab_model_breakers`).
    Times are Unix seconds."""

    phase: BreakerPhase = BreakerPhase.CLOSED
    failures: int = 0  # consecutive failures while closed
    open_until: float = 0.0
    probe_until: float = 0.0
    last_error: str = ""
    updated_at: float = 0.0


class ListModels(Message, frozen=True, kw_only=True, tag="list_models"):
    """ab.executor.svc.models: each agent's model deployments and their breakers; with `check`, each
    deployment is also sent one tiny request."""

    check: bool = False


class DeploymentStatus(Record, frozen=True, kw_only=True):
    agent: str
    deployment: str  # the name runs report as their model (`provider:model`, or `provider:model@base_url`)
    position: int  # its place in the agent's chain (0: tried first); deployments balanced together share one
    weight: int = 1
    breaker: BreakerState = BreakerState()
    retry_after_s: float = 0.0  # how long the breaker still refuses requests


class DeploymentCheck(Record, frozen=True, kw_only=True):
    deployment: str
    ok: bool
    ms: float = 0.0
    error: str = ""


class ModelList(Message, frozen=True, kw_only=True, tag="model_list"):
    models: list[DeploymentStatus]
    checks: list[DeploymentCheck] = []
    offline: list[str] = []  # agents that run on the offline model (no provider configured)


ModelsReply = ModelList | ErrorReply
