"""Where a page of a newest-first list ends: the keyset the next page starts after."""

from __future__ import annotations

from datetime import datetime

from schemas._base import Record

__all__ = ["Keyset"]


class Keyset(Record, frozen=True, kw_only=True):
    """The last item of a page by its sort key: the next page holds what sorts after (`at`, `id`), newest first.
    Clients see it only as an opaque cursor (gateway/cursors.py)."""

    at: datetime
    id: str
