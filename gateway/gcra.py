"""Rate limits shared by every gateway replica: GCRA over JetStream KV, compare-and-set on the revision.

Why no library: `limits` keeps its counters in memory, Redis, Memcached, MongoDB or etcd, and
`pyrate-limiter` (in this venv) in memory, Redis, SQLite or PostgreSQL, as a log of every request's
timestamp; neither speaks NATS, and the gateway's one shared store is JetStream KV (it owns no
tables). GCRA — the generic cell rate algorithm, as `redis-cell` and `throttled` implement it — needs
one number per limited thing, its theoretical arrival time (TAT), which makes it cheap to share: a
check is one KV read and one compare-and-set write (`update(last=revision)`), and a replica that lost
the race to another reads again and retries (`ATTEMPTS`). The read is skipped while the replica's
cached revision is current, so a key used through one replica costs one KV write per request, and a
key over its limit costs none (a refusal is decided from the cached TAT, which can only lag behind).
A replica writes each key one request at a time (a lock per key), so only replicas race each other.
The bucket is held in memory (replicated like the others, never fsynced): a NATS restart forgets
every TAT, which only lets each key start with its whole burst again.

A policy allows `quota` requests per `window_s` (60 s) with a burst of the whole quota: each request
moves the TAT on by `window_s / quota`; one is refused while TAT would land more than a window ahead.

When KV does not answer within `TIMEOUT_S` (a leader election, NATS away) the request is let through
(fail open) with a warning in the log, at most every `WARN_EVERY_S`: a rate limit protects capacity,
and refusing every client while the bus recovers would be the outage it protects against. The clocks
of the gateway replicas are compared through the TATs they write: keep them NTP-synchronised.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from dataclasses import dataclass

import structlog
from nats.js.errors import KeyNotFoundError, KeyValueError
from nats.js.kv import KeyValue

from bus.streams import RATE_LIMITS_BUCKET

__all__ = ["BUCKET", "Decision", "Policy", "RateLimiter"]

BUCKET = RATE_LIMITS_BUCKET
BUCKET_TTL_S = 300.0  # an entry idle this long holds nothing a fresh one would not (TAT <= now + window)
TIMEOUT_S = 0.5
ATTEMPTS = 4
WARN_EVERY_S = 10.0
CACHED = 10_000  # (TAT, revision) pairs a replica remembers
log = structlog.get_logger("gateway")


@dataclass(frozen=True, slots=True)
class Policy:
    """`quota` requests per `window_s`, named in the RateLimit headers (`key`, `tenant`, `webhook`)."""

    name: str
    quota: int
    window_s: int = 60

    @property
    def interval_s(self) -> float:
        return self.window_s / self.quota

    def header(self) -> str:
        return f'"{self.name}";q={self.quota};w={self.window_s}'


@dataclass(frozen=True, slots=True)
class Decision:
    policy: Policy
    allowed: bool
    remaining: int  # requests still allowed right now
    reset_s: int  # until the whole quota is back
    retry_after_s: int = 0  # refused: until one request is allowed again

    def header(self) -> str:
        return f'"{self.policy.name}";r={self.remaining};t={self.reset_s}'


class RateLimiter:
    """GCRA decisions for KV keys (`key.<digest>`, `tenant.<tenant>`, `webhook.<task>`)."""

    def __init__(self, kv: KeyValue, leader_kv: KeyValue) -> None:
        self._kv = kv
        self._leader_kv = leader_kv  # after a lost race: the stream leader has the newest revision
        self._seen: dict[str, tuple[float, int]] = {}
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._warned = 0.0

    async def check(self, policy: Policy, key: str) -> Decision | None:
        """The decision for one more request on `key`; None when KV cannot answer (let it through)."""
        if (refused := self._refused(policy, key)) is not None:
            return refused
        try:
            async with asyncio.timeout(TIMEOUT_S):
                lock = self._locks.get(key)
                if lock is None:
                    lock = self._locks[key] = asyncio.Lock()
                async with lock:  # one write per key at a time from this replica: others race only across replicas
                    return await self._check(policy, key)
        except Exception as e:  # TimeoutError, a NATS error, a closed connection: fail open
            now = time.monotonic()
            if now - self._warned > WARN_EVERY_S:
                self._warned = now
                log.warning("rate limit store unavailable: requests are let through", error=repr(e))
            return None

    def _refused(self, policy: Policy, key: str) -> Decision | None:
        """A refusal decided from the cached TAT alone (it can only lag behind the stored one), or None."""
        cached = self._seen.get(key)
        if cached is None:
            return None
        now = time.time()
        tat = max(cached[0], now)
        if tat + policy.interval_s - now <= policy.window_s:
            return None
        retry = max(1, math.ceil(tat + policy.interval_s - policy.window_s - now))
        return Decision(policy, False, 0, math.ceil(tat - now), retry_after_s=retry)

    async def _check(self, policy: Policy, key: str) -> Decision:
        for attempt in range(ATTEMPTS):
            now = time.time()
            cached = self._seen.get(key) if attempt == 0 else None
            stored, revision = cached if cached is not None else await self._read(key, leader=attempt > 0)
            tat = max(stored, now)
            new_tat = tat + policy.interval_s
            if new_tat - now > policy.window_s:
                retry = new_tat - policy.window_s - now
                return Decision(policy, False, 0, math.ceil(tat - now), retry_after_s=max(1, math.ceil(retry)))
            value = repr(new_tat).encode()
            try:
                if revision == 0:
                    revision = await self._kv.create(key, value)
                else:
                    revision = await self._kv.update(key, value, last=revision)
            except KeyValueError:  # another replica wrote first (wrong last sequence): read again
                self._seen.pop(key, None)
                continue
            if len(self._seen) >= CACHED:
                self._seen.clear()
            self._seen[key] = (new_tat, revision)
            remaining = math.floor((policy.window_s - (new_tat - now)) / policy.interval_s + 1e-9)
            return Decision(policy, True, remaining, math.ceil(new_tat - now))
        # contention beyond ATTEMPTS (as many replicas writing this key at once): let it through, uncounted
        log.info("rate limit contention: request let through", key=key.split(".")[0])
        return Decision(policy, True, 0, policy.window_s)

    async def _read(self, key: str, *, leader: bool) -> tuple[float, int]:
        try:
            entry = await (self._leader_kv if leader else self._kv).get(key)
        except KeyNotFoundError:
            return 0.0, 0
        try:
            return float(entry.value or b"0"), entry.revision or 0
        except ValueError:
            return 0.0, entry.revision or 0
