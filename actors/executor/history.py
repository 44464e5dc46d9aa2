"""A run's history: inline in its RunRequest, or read by reference from its conversation in pages.

A reference pins the turns it includes (`HistoryRef.through_seq`), and parts of a history never
change once their turn has ended, so the parts read for one turn are kept (up to a byte budget,
least recently used first out) and the next turn of the same conversation asks only for the turns
after them: the conversation serves each turn's messages about once, not the whole history again.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from bus import subjects
from bus.client import Bus
from bus.errors import BusError
from bus.headers import Trace
from schemas.conversation import GetHistory, HistoryCursor, HistoryPage
from schemas.errors import ErrorCode
from schemas.runs import HistoryRef, RunRequest

__all__ = ["HistoryCache", "HistoryUnreadable", "read_history"]

TRANSIENT = (ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT)
MAX_PAGES = 100_000  # a conversation whose cursor never ends is refused rather than read forever


class HistoryUnreadable(Exception):
    """The reference names no history this run may read (another tenant's, or gone)."""


@dataclass(slots=True)
class _Held:
    tenant: str
    through_seq: int
    parts: dict[int, bytes]  # part seq -> its JSON array, complete
    size: int


@dataclass(slots=True)
class HistoryCache:
    """Parts of referenced histories already read, by conversation, at most `max_bytes` in all."""

    max_bytes: int = 64 * 1024 * 1024
    _held: OrderedDict[str, _Held] = field(default_factory=OrderedDict)
    _size: int = 0

    def get(self, tenant: str, ref: HistoryRef) -> _Held | None:
        held = self._held.get(ref.conversation_id)
        if held is None or held.tenant != tenant:
            return None
        self._held.move_to_end(ref.conversation_id)
        return held

    def put(self, held: _Held, conversation_id: str) -> None:
        if (old := self._held.pop(conversation_id, None)) is not None:
            self._size -= old.size
        if held.size > self.max_bytes:
            return
        self._held[conversation_id] = held
        self._size += held.size
        while self._size > self.max_bytes:
            _, evicted = self._held.popitem(last=False)
            self._size -= evicted.size


async def read_history(bus: Bus, cache: HistoryCache, req: RunRequest, trace: Trace) -> bytes:
    """The request's history as one pydantic-ai JSON array. Raises HistoryUnreadable, or BusError
    when the conversation cannot answer now (the run is then retried)."""
    ref = req.history_ref
    if ref is None:
        return bytes(req.history)
    held = cache.get(trace.tenant, ref)
    parts: dict[int, bytes] = {}
    start = HistoryCursor()
    if held is not None:
        parts = {seq: data for seq, data in held.parts.items() if seq <= ref.through_seq}
        if held.through_seq >= ref.through_seq:
            return _splice(parts)
        start = HistoryCursor(seq=held.through_seq + 1)
    parts.update(await _read_pages(bus, ref, start, trace))
    if held is None or ref.through_seq > held.through_seq:
        cache.put(_Held(trace.tenant, ref.through_seq, parts, sum(map(len, parts.values()))), ref.conversation_id)
    return _splice(parts)


async def _read_pages(bus: Bus, ref: HistoryRef, cursor: HistoryCursor, trace: Trace) -> dict[int, bytes]:
    service = subjects.service(subjects.ActorName.CONVERSATION, "history")
    read: dict[int, bytearray] = {}
    for _ in range(MAX_PAGES):
        try:
            page = await bus.request(service, GetHistory(ref=ref, after=cursor), HistoryPage, trace=trace)
        except BusError as e:
            if e.code in TRANSIENT:
                raise
            raise HistoryUnreadable(f"the conversation's history cannot be read: {e.message}") from e
        for part in page.parts:
            read.setdefault(part.seq, bytearray()).extend(part.data)
        if page.next is None:
            return {seq: bytes(data) for seq, data in read.items()}
        cursor = page.next
    raise HistoryUnreadable("the conversation's history did not end")


def _splice(parts: dict[int, bytes]) -> bytes:
    """The parts' JSON arrays joined into one, in turn order."""
    inner = [parts[seq].strip()[1:-1].strip() for seq in sorted(parts)]
    return b"[" + b",".join(p for p in inner if p) + b"]"
