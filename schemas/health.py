"""Health queries every actor answers on ab.<actor>.svc.health."""

from __future__ import annotations

from schemas._base import Message

__all__ = ["HealthCheck", "HealthReport"]


class HealthCheck(Message, frozen=True, kw_only=True, tag="health_check"):
    pass


class HealthReport(Message, frozen=True, kw_only=True, tag="health_report"):
    """`checks` maps a dependency (e.g. `postgres`) to `ok` or the error text."""

    actor: str
    instance: str
    ok: bool
    checks: dict[str, str] = {}
