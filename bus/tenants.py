"""Tenant settings in JetStream KV (`ab_tenants`), resolved against the platform defaults.

`TenantDefaults.from_env()` holds the defaults (`AGENTBUS_RATE_LIMIT_TENANT`, `AGENTBUS_QUOTA_<NAME>`,
`AGENTBUS_BUDGET_<NAME>`); `TenantSettingsCache` follows the bucket with a KV watch, so a change made by
`agentbus tenants set` reaches every replica within moments, with no TTL to wait out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

import msgspec
import structlog
from nats.js.errors import KeyNotFoundError

from bus.client import Bus, KvChange
from schemas.tenants import Budgets, Quotas, TenantSettings

__all__ = ["BUCKET", "Effective", "TenantDefaults", "TenantSettingsCache", "read", "write"]

BUCKET = "ab_tenants"
S = TypeVar("S", Quotas, Budgets)
log = structlog.get_logger("bus")


@dataclass(frozen=True, slots=True)
class Effective:
    """A tenant's settings with every default filled in (0: no limit)."""

    rate_limit: int
    quotas: Quotas
    budgets: Budgets
    agents: tuple[str, ...] | None


DEFAULT_QUOTAS = Quotas(
    tasks=1000,
    active_schedules=100,
    min_interval_s=60,
    documents=10_000,
    document_bytes=1 << 30,
    concurrent_runs=0,  # 0: only the executor's fair share applies
    streams=100,
    research_jobs=10,
)
DEFAULT_BUDGETS = Budgets(tokens_per_day=0, tokens_per_month=0, usd_per_day=0.0, usd_per_month=0.0)


@dataclass(frozen=True, slots=True)
class TenantDefaults:
    rate_limit: int = 0  # per tenant, requests/min (per key it is AGENTBUS_RATE_LIMIT, in the gateway)
    quotas: Quotas = DEFAULT_QUOTAS
    budgets: Budgets = DEFAULT_BUDGETS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TenantDefaults:
        e = os.environ if env is None else env
        d = cls()
        quotas = {f: e.get(f"AGENTBUS_QUOTA_{f.upper()}") for f in Quotas.__struct_fields__}
        budgets = {f: e.get(f"AGENTBUS_BUDGET_{f.upper()}") for f in Budgets.__struct_fields__}
        return cls(
            rate_limit=int(e.get("AGENTBUS_RATE_LIMIT_TENANT", d.rate_limit)),
            quotas=msgspec.structs.replace(d.quotas, **{k: int(v) for k, v in quotas.items() if v}),
            budgets=msgspec.structs.replace(
                d.budgets, **{k: (float(v) if k.startswith("usd") else int(v)) for k, v in budgets.items() if v}
            ),
        )

    def resolve(self, settings: TenantSettings | None) -> Effective:
        s = settings or TenantSettings()
        return Effective(
            rate_limit=self.rate_limit if s.rate_limit is None else s.rate_limit,
            quotas=_overlay(self.quotas, s.quotas),
            budgets=_overlay(self.budgets, s.budgets),
            agents=s.agents,
        )


def _overlay(base: S, over: S) -> S:
    """`base` with every field `over` sets (is not None) taken from `over`."""
    changes = {f: v for f in over.__struct_fields__ if (v := getattr(over, f)) is not None}
    return msgspec.structs.replace(base, **changes)


async def read(bus: Bus, tenant: str) -> TenantSettings:
    kv = await bus.key_value(BUCKET, leader=True)
    try:
        entry = await kv.get(tenant)
    except KeyNotFoundError:
        return TenantSettings()
    return msgspec.json.decode(entry.value or b"{}", type=TenantSettings)


async def write(bus: Bus, tenant: str, settings: TenantSettings) -> None:
    kv = await bus.key_value(BUCKET, leader=True)
    await kv.put(tenant, msgspec.json.encode(settings))


class TenantSettingsCache:
    """Every tenant's settings, kept current by a KV watch; `get` never waits on the bus."""

    def __init__(self, bus: Bus, defaults: TenantDefaults | None = None) -> None:
        self.bus = bus
        self.defaults = defaults or TenantDefaults.from_env()
        self._settings: dict[str, TenantSettings] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._follow(self.bus.kv_watch(BUCKET)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout=5.0)

    async def _follow(self, changes: AsyncIterator[KvChange | None]) -> None:
        async for change in changes:
            if change is None:  # the initial values are all delivered
                self._ready.set()
                continue
            if change.value is None:
                self._settings.pop(change.key, None)
                continue
            try:
                self._settings[change.key] = msgspec.json.decode(change.value, type=TenantSettings)
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.warning("unreadable tenant settings ignored", tenant=change.key)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def get(self, tenant: str) -> Effective:
        return self.defaults.resolve(self._settings.get(tenant))
