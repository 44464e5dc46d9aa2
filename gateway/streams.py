"""Open SSE and WebSocket streams per tenant, against its `streams` quota.

Counted per gateway replica, in memory: a stream lives in one replica's process, so its count there is
exact and dies with it (a shared KV counter would keep the streams of a replica that crashed until
something expired them). With N replicas behind a balancer a tenant may hold up to N times its quota; set
the quota to the share of one replica.
"""

from __future__ import annotations

import weakref
from collections import Counter
from types import TracebackType

from bus.quotas import quota_exceeded
from bus.tenants import TenantSettingsCache

__all__ = ["StreamSlot", "StreamSlots"]


class StreamSlot:
    """One open stream; `release` (or leaving `with`) gives it back, once."""

    def __init__(self, slots: StreamSlots, tenant: str) -> None:
        self._slots = slots
        self._tenant = tenant
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots.give_back(self._tenant)

    def release_with(self, owner: object) -> None:
        """Release when `owner` (a stream's generator) is collected, if nothing released it before."""
        weakref.finalize(owner, self.release)

    def __enter__(self) -> StreamSlot:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.release()


class StreamSlots:
    def __init__(self, tenants: TenantSettingsCache) -> None:
        self.tenants = tenants
        self._open: Counter[str] = Counter()

    def take(self, tenant: str) -> StreamSlot:
        """A slot for one more stream of `tenant`; BusError(quota_exceeded) when it holds its quota."""
        limit = self.tenants.get(tenant).quotas.streams or 0
        if limit and self._open[tenant] >= limit:
            raise quota_exceeded("streams", limit, f"{self._open[tenant]} streams are open")
        self._open[tenant] += 1
        return StreamSlot(self, tenant)

    def give_back(self, tenant: str) -> None:
        self._open[tenant] -= 1
        if self._open[tenant] <= 0:
            del self._open[tenant]

    def open(self, tenant: str) -> int:
        return self._open[tenant]
