"""The run slots of one executor replica (`AGENTBUS_MAX_RUNS`), shared fairly between tenants.

The executor pulls run requests from one durable consumer shared by every tenant, in the order they
came; without this, a tenant that queued 50 runs would hold every slot and a second tenant's run would
wait behind all of them. A run the share does not admit goes back to the stream for a moment
(`Retry(waiting=True)`: a nak with a delay, never counted toward dead-lettering it), and the consumer
hands over the next message, so a second tenant's run is reached within a round of naks.

The rule (max-min fairness over the tenants this replica sees, keeping one slot for a newcomer):
- `active` is every tenant running here or turned away in the last `waiting_s`, and the one asking;
  a tenant's share is `max(1, slots // len(active))`;
- the last free slot (of more than one) goes only to a tenant that holds none here: a tenant alone
  holds at most `slots - 1`, so another's first run starts at once, without waiting for one to end;
- any other free slot goes to a tenant under its share, or to one at or over it when no other tenant
  under its share was turned away lately (so a tenant alone uses the replica, and yields as others come).

A sub-run of a run (a pipeline's step, a subagent hand-off) is always admitted and counted: its parent
holds a slot and waits for it, so turning it away could leave every slot waiting on runs that cannot
start. The tenant's `concurrent_runs` quota, across replicas, is the run store's (actors/executor/store.py).

No library fits: the fair-queueing ones (`aiolimiter`, `asyncio.Semaphore`, `pyrate-limiter`) limit a
rate or one pool, not shares of a pool between keys, and the queue here is JetStream's, not in-process.
"""

from __future__ import annotations

import time
from collections import Counter

__all__ = ["FairShare"]


class FairShare:
    def __init__(self, slots: int, *, waiting_s: float = 5.0) -> None:
        self.slots = max(1, slots)
        self.waiting_s = waiting_s
        self._running: Counter[str] = Counter()
        self._turned_away: dict[str, float] = {}  # tenant -> when it was last turned away

    def take(self, tenant: str) -> bool:
        """A slot for one run of `tenant`, or False: it must wait (and is remembered as waiting)."""
        now = time.monotonic()
        self._forget_waits(now)
        if self._admits(tenant):
            self._running[tenant] += 1
            return True
        self._turned_away[tenant] = now
        return False

    def hold(self, tenant: str) -> None:
        """Count a slot that is not asked for (a sub-run's: see the module's docstring)."""
        self._running[tenant] += 1

    def release(self, tenant: str) -> None:
        self._running[tenant] -= 1
        if self._running[tenant] <= 0:
            del self._running[tenant]

    def share(self, tenant: str) -> int:
        active = {t for t, n in self._running.items() if n > 0} | set(self._turned_away) | {tenant}
        return max(1, self.slots // len(active))

    def running(self, tenant: str | None = None) -> int:
        return sum(self._running.values()) if tenant is None else self._running[tenant]

    def _admits(self, tenant: str) -> bool:
        total, mine = self.running(), self._running[tenant]
        if total >= self.slots:
            return False
        if total == self.slots - 1 and self.slots > 1:
            return mine == 0
        if mine < self.share(tenant):
            return True
        return not any(self._running[t] < self.share(t) for t in self._turned_away if t != tenant)

    def _forget_waits(self, now: float) -> None:
        for tenant, when in list(self._turned_away.items()):
            if now - when > self.waiting_s:
                del self._turned_away[tenant]
