"""A tenant's settings: its rate limit, quotas, budgets and the agents its keys may run.

Stored per tenant in the KV bucket `ab_tenants` (bus/tenants.py). Every field is optional: a field
left out takes the platform default from the environment (`TenantDefaults`), so setting one quota
for one tenant changes nothing else. `0` means "no limit" for every number here.
"""

from __future__ import annotations

from schemas._base import Record

__all__ = ["Budgets", "Quotas", "TenantSettings"]


class Quotas(Record, frozen=True, kw_only=True):
    tasks: int | None = None  # tasks that exist (any kind)
    active_schedules: int | None = None  # enabled scheduled tasks
    min_interval_s: int | None = None  # the shortest interval (or 6-field cron period) a schedule may have
    documents: int | None = None  # research documents stored
    document_bytes: int | None = None  # their bytes, summed
    concurrent_runs: int | None = None  # runs executing at once across every executor replica
    streams: int | None = None  # open SSE and WebSocket streams, on each gateway replica (docs/limits.md)
    research_jobs: int | None = None  # research jobs not yet finished


class Budgets(Record, frozen=True, kw_only=True):
    tokens_per_day: int | None = None  # UTC day
    tokens_per_month: int | None = None  # UTC calendar month
    usd_per_day: float | None = None
    usd_per_month: float | None = None


class TenantSettings(Record, frozen=True, kw_only=True):
    rate_limit: int | None = None  # requests per minute, summed over every key of the tenant
    quotas: Quotas = Quotas()
    budgets: Budgets = Budgets()
    agents: tuple[str, ...] | None = None  # the agents (and pipelines) its keys may run; None: every public one
