"""Time for the scheduler, injectable: tests drive a FakeClock instead of waiting for real minutes."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    def now(self) -> datetime: ...

    async def sleep(self, seconds: float, wake: asyncio.Event) -> None:
        """Sleep `seconds` of this clock's time, or until `wake` is set."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float, wake: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), max(seconds, 0.0))


class FakeClock:
    """Time stands still until `advance()`; sleepers wake when their time has come."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._moved = asyncio.Condition()

    def now(self) -> datetime:
        return self._now

    async def advance(self, seconds: float) -> None:
        async with self._moved:
            self._now += timedelta(seconds=seconds)
            self._moved.notify_all()

    async def sleep(self, seconds: float, wake: asyncio.Event) -> None:
        until = self._now + timedelta(seconds=max(seconds, 0.0))

        async def time_passes() -> None:
            async with self._moved:
                await self._moved.wait_for(lambda: self._now >= until)

        waits = [asyncio.ensure_future(time_passes()), asyncio.ensure_future(wake.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
