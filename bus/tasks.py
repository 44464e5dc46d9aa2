"""Cancelling a task so that it really ends.

Python 3.11's `asyncio.wait_for` (which nats-py uses for every publish and request) can swallow a
cancel that arrives as the awaited future completes: the task goes on to its next await and a
single `task.cancel(); await task` waits forever. So cancel again until the task has ended.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait"]

RECANCEL_S = 0.05


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel `tasks` and wait until every one has ended (re-cancelling one that swallowed it)."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_S)
    for task in tasks:  # retrieve their outcome: nothing is left "never retrieved"
        if not task.cancelled():
            task.exception()
