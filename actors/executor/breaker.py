"""Circuit breakers per model deployment, shared by every executor replica through JetStream KV.

closed --(`failures` consecutive availability errors, or one 429 with Retry-After)--> open until a
cool-down (or the Retry-After) passes --> the first request after it claims the one probe (half_open)
--> success closes, failure re-opens. Every transition is a compare-and-set on the key's KV revision,
so two replicas never both win the probe. A closed breaker is read from a local copy at most
`cache_s` old, so a healthy deployment costs no bus round trip per request.

Hand-written, not pybreaker / aiobreaker / purgatory: their state lives in memory or Redis, behind a
synchronous storage interface with no compare-and-set, and none opens for a provider's Retry-After.
What counts as a failure is pydantic-ai's own classification of provider errors (exceptions.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import msgspec
import structlog
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic_ai.exceptions import (
    ModelAPIError,
    ModelConnectionError,
    ModelRateLimitError,
    ModelRequestTimeout,
    ModelServerError,
    ModelUnavailableError,
)

from bus.breakers import BUCKET, deployment_key
from bus.client import Bus
from schemas.models import BreakerPhase, BreakerState

__all__ = ["AVAILABILITY_ERRORS", "BreakerConfig", "BreakerOpen", "Breakers"]

log = structlog.get_logger("executor.breaker")

# errors that say "this deployment cannot serve now" (a 4xx about the request itself does not)
AVAILABILITY_ERRORS: tuple[type[ModelAPIError], ...] = (
    ModelRateLimitError,
    ModelUnavailableError,
    ModelServerError,
    ModelConnectionError,
    ModelRequestTimeout,
)
CAS_ATTEMPTS = 8


class BreakerOpen(ModelUnavailableError):
    """Raised instead of sending a request to a deployment whose breaker is open: the fallback moves on."""

    def __init__(self, deployment: str, retry_after: float) -> None:
        super().__init__(deployment, f"{deployment}: circuit breaker open", retry_after=max(retry_after, 0.0))
        self.deployment = deployment


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failures: int = 3  # consecutive availability errors that open the breaker
    cooldown_s: float = 30.0  # how long it stays open before one probe may go
    probe_timeout_s: float = 120.0  # a probe not reported back by then (its replica died) is given up
    cache_s: float = 1.0  # how old the local copy of a closed breaker may be


class Breakers:
    """The breakers of every deployment, over one KV bucket."""

    def __init__(self, bus: Bus, config: BreakerConfig) -> None:
        self.bus = bus
        self.config = config
        self._kv: KeyValue | None = None
        self._seen: dict[str, tuple[float, BreakerState]] = {}  # deployment -> (read at, state)

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.bus.key_value(BUCKET, leader=True)
        return self._kv

    async def _read(self, deployment: str) -> tuple[BreakerState, int | None]:
        """The state and its KV revision (None: never written)."""
        kv = await self._bucket()
        try:
            entry = await kv.get(deployment_key(deployment))
        except KeyNotFoundError:
            state, revision = BreakerState(), None
        else:
            state = msgspec.json.decode(entry.value, type=BreakerState) if entry.value else BreakerState()
            revision = entry.revision
        self._seen[deployment] = (time.monotonic(), state)
        return state, revision

    async def _write(self, deployment: str, state: BreakerState, revision: int | None) -> bool:
        """Compare-and-set: False when another replica changed it first."""
        kv = await self._bucket()
        key, value = deployment_key(deployment), msgspec.json.encode(state)
        try:
            if revision is None:
                await kv.create(key, value)
            else:
                await kv.update(key, value, last=revision)
        except KeyWrongLastSequenceError:
            return False
        self._seen[deployment] = (time.monotonic(), state)
        return True

    def cached(self, deployment: str) -> BreakerState:
        """The last state this replica saw (closed if it saw none)."""
        seen = self._seen.get(deployment)
        return seen[1] if seen is not None else BreakerState()

    def wait_s(self, state: BreakerState, now: float | None = None) -> float:
        """How long `state` still refuses requests (0: one may go now)."""
        now = time.time() if now is None else now
        match state.phase:
            case BreakerPhase.CLOSED:
                return 0.0
            case BreakerPhase.OPEN:
                return max(state.open_until - now, 0.0)
            case BreakerPhase.HALF_OPEN:
                return max(state.probe_until - now, 0.0)

    async def admit(self, deployment: str) -> None:
        """Let a request to `deployment` go, or raise BreakerOpen. Past an open breaker's cool-down, the one
        request that wins the compare-and-set goes as the probe."""
        seen = self._seen.get(deployment)
        fresh = seen is not None and time.monotonic() - seen[0] < self.config.cache_s
        if fresh and seen is not None and seen[1].phase is BreakerPhase.CLOSED:
            return
        for _ in range(CAS_ATTEMPTS):
            state, revision = await self._read(deployment)
            now = time.time()
            if state.phase is BreakerPhase.CLOSED:
                return
            if (wait := self.wait_s(state, now)) > 0:
                raise BreakerOpen(deployment, wait)
            probe = msgspec.structs.replace(
                state, phase=BreakerPhase.HALF_OPEN, probe_until=now + self.config.probe_timeout_s, updated_at=now
            )
            if await self._write(deployment, probe, revision):
                log.info("breaker half-open: probing", deployment=deployment)
                return
        raise BreakerOpen(deployment, 1.0)  # others keep changing it: someone else probes

    async def succeeded(self, deployment: str) -> None:
        seen = self.cached(deployment)
        if deployment in self._seen and seen.phase is BreakerPhase.CLOSED and seen.failures == 0:
            return  # closed with no failures: nothing to write (the usual case)
        for _ in range(CAS_ATTEMPTS):
            state, revision = await self._read(deployment)
            if state.phase is BreakerPhase.CLOSED and state.failures == 0:
                return
            if await self._write(deployment, BreakerState(updated_at=time.time()), revision):
                if state.phase is not BreakerPhase.CLOSED:
                    log.info("breaker closed", deployment=deployment)
                return

    async def failed(self, deployment: str, error: BaseException) -> None:
        """Count `error` against the deployment if it says the deployment cannot serve (see AVAILABILITY_ERRORS)."""
        if isinstance(error, BreakerOpen) or not isinstance(error, AVAILABILITY_ERRORS):
            return
        retry_after = error.retry_after if isinstance(error, ModelRateLimitError) else None
        text = f"{type(error).__name__}: {error}"[:300]
        for _ in range(CAS_ATTEMPTS):
            state, revision = await self._read(deployment)
            now = time.time()
            failures = state.failures + 1 if state.phase is BreakerPhase.CLOSED else state.failures
            opens = state.phase is not BreakerPhase.CLOSED or failures >= self.config.failures or retry_after
            if opens:
                until = now + (retry_after if retry_after else self.config.cooldown_s)
                new = BreakerState(
                    phase=BreakerPhase.OPEN, failures=failures, open_until=max(until, state.open_until),
                    last_error=text, updated_at=now,
                )  # fmt: skip
            else:
                new = BreakerState(failures=failures, last_error=text, updated_at=now)
            if await self._write(deployment, new, revision):
                if opens:
                    log.warning("breaker open", deployment=deployment, s=round(new.open_until - now, 1), error=text)
                return

    async def state(self, deployment: str) -> BreakerState:
        return (await self._read(deployment))[0]
