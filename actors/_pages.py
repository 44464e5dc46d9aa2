"""A page of a list reply, bounded in bytes: it must stay under NATS's 1 MB `max_payload` whatever its items hold."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

__all__ = ["PAGE_BYTES", "fitting"]

PAGE_BYTES = 512 * 1024  # of encoded items a list reply carries at most (the first always comes)


def fitting(items: Sequence[object], budget: int = PAGE_BYTES) -> int:
    """How many of `items`, from the first, fit in `budget` bytes as JSON: at least one, when there is one."""
    size = 0
    for n, item in enumerate(items):
        size += len(msgspec.json.encode(item))
        if n and size > budget:
            return n
    return len(items)
