"""What GET /v1/status and GET /v1/stats answer (gateway/status.py, gateway/stats.py): the operator's view of
the running platform, and the caller tenant's counts and rates. HTTP JSON, not bus messages; every field is
always sent."""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "ActorStatus",
    "ConsumerBacklog",
    "PlatformStatus",
    "Rates",
    "ReplicaStatus",
    "RunCounts",
    "TaskCounts",
    "TenantStats",
    "TokenCounts",
]


class ReplicaStatus(msgspec.Struct, frozen=True, kw_only=True):
    instance: str  # host-pid-n, as the replica's logs name it
    ok: bool
    checks: dict[str, str]  # a dependency (e.g. `postgres`) -> `ok` or why not; `health` when it did not answer


class ActorStatus(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool  # at least one replica, and every replica healthy
    replicas: list[ReplicaStatus]


class ConsumerBacklog(msgspec.Struct, frozen=True, kw_only=True):
    stream: str
    consumer: str  # a durable; `trigger-task-*` sums the subject triggers' consumers (one per task)
    pending: int  # stored, not yet delivered
    ack_pending: int  # delivered, not yet acked
    redelivered: int  # delivered more than once and not yet acked


class PlatformStatus(msgspec.Struct, frozen=True, kw_only=True):
    actors: dict[str, ActorStatus]
    consumers: list[ConsumerBacklog]
    dead_letters: dict[str, int]  # the caller tenant's, per actor
    models: dict[str, Any]  # as GET /health's `models`: the circuit breakers of failing model deployments


class TaskCounts(msgspec.Struct, frozen=True, kw_only=True):
    total: int
    enabled: int


class RunCounts(msgspec.Struct, frozen=True, kw_only=True):
    total: int
    by_status: dict[str, int]
    last_24h: int


class TokenCounts(msgspec.Struct, frozen=True, kw_only=True):
    input: int
    output: int
    total: int


class Rates(msgspec.Struct, frozen=True, kw_only=True):
    runs_per_hour_24h: float
    tokens_per_hour_24h: float


class TenantStats(msgspec.Struct, frozen=True, kw_only=True):
    conversations: int
    tasks: TaskCounts
    runs: RunCounts
    tokens: TokenCounts
    cost_usd: float  # the priced part of the spend
    rates: Rates
