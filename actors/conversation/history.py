"""A conversation's history as pydantic-ai loads it back: whole (inline in a RunRequest) or in pages.

The history is a sequence of parts, each a JSON array of pydantic-ai messages: `base_history`
(what a continued conversation started from, part 0) and the `new_messages` of each completed
turn (part `seq`, the turn's command sequence). Parts up to a reference's `through_seq` belong to
turns that have ended, so they never change: every page of a reference, read now or on a
redelivery, is the same. A page carries at most `budget` bytes, splitting a part across pages
where it must, so a single huge message is never refused and never exceeds a page.
"""

from __future__ import annotations

from dataclasses import dataclass

from actors._postgres import Conn
from schemas.conversation import HistoryCursor, HistoryPage, HistoryPart

__all__ = ["Extent", "extent", "page", "splice", "whole"]

# $1 conversation id, $2 the last turn included
PARTS = """
    SELECT 0::bigint AS seq, base_history AS part FROM conversations WHERE id = $1
    UNION ALL
    SELECT seq, new_messages FROM turns
    WHERE conversation_id = $1 AND status = 'completed' AND new_messages IS NOT NULL AND seq <= $2
"""
UNBOUNDED = 2**62


@dataclass(frozen=True, slots=True)
class Extent:
    size: int  # bytes of its parts
    through_seq: int  # the last turn it includes; 0: none
    inline: bytes | None  # the history as one JSON array, when it is at most the inline limit


async def extent(conn: Conn, conversation_id: str, *, before_seq: int, inline_limit: int) -> Extent:
    """How large the history of the turn at `before_seq` is (every completed turn before it), and,
    in the same query, the history itself when it is small enough to travel inline."""
    # the parts are read only when small enough (a subquery in CASE runs only when its branch is taken;
    # an aggregate there would read them all, every turn); octet_length reads no part's value
    row = await conn.fetchrow(
        f"""
        SELECT size, through,
            CASE WHEN size <= $3 THEN (SELECT array_agg(part ORDER BY seq) FROM ({PARTS}) q) END AS parts
        FROM (SELECT coalesce(sum(octet_length(part)), 0) AS size, max(seq) AS through FROM ({PARTS}) p) s
        """,
        conversation_id, before_seq - 1, inline_limit,
    )  # fmt: skip
    assert row is not None
    parts = row["parts"]
    inline = splice([p.encode() for p in parts]) if parts is not None else None
    return Extent(size=int(row["size"]), through_seq=int(row["through"] or 0), inline=inline)


async def whole(conn: Conn, conversation_id: str, *, through_seq: int = UNBOUNDED) -> bytes:
    """The history up to `through_seq` as one JSON array."""
    rows = await conn.fetch(f"SELECT part FROM ({PARTS}) p ORDER BY seq", conversation_id, through_seq)
    return splice([r["part"].encode() for r in rows])


def splice(parts: list[bytes]) -> bytes:
    """JSON arrays joined into one: their items, in order."""
    inner = [p.strip()[1:-1].strip() for p in parts]
    return b"[" + b",".join(p for p in inner if p) + b"]"


async def page(conn: Conn, conversation_id: str, *, through_seq: int, after: HistoryCursor, budget: int) -> HistoryPage:
    """The parts from `after` on, `budget` bytes of them at most (as base64, how the page travels)."""
    raw_budget = max(1, budget * 3 // 4 - 64)  # base64 is 4 bytes per 3; a little room for each part's framing
    sizes = await conn.fetch(
        f"SELECT seq, octet_length(convert_to(part, 'UTF8')) AS size FROM ({PARTS}) p WHERE seq >= $3 ORDER BY seq",
        conversation_id, through_seq, after.seq,
    )  # fmt: skip
    wanted: list[tuple[int, int, int]] = []  # (seq, start, length)
    left, next_cursor = raw_budget, None
    for row in sizes:
        seq, size = int(row["seq"]), int(row["size"])
        start = after.offset if seq == after.seq else 0
        if start >= size:
            continue
        if left <= 0:
            next_cursor = HistoryCursor(seq=seq, offset=start)
            break
        length = min(size - start, left)
        wanted.append((seq, start, length))
        left -= length + 64
        if start + length < size:
            next_cursor = HistoryCursor(seq=seq, offset=start + length)
            break
    if not wanted:
        return HistoryPage(next=next_cursor)
    rows = await conn.fetch(
        f"""
        SELECT p.seq, substring(convert_to(p.part, 'UTF8') FROM w.start + 1 FOR w.len) AS data
        FROM ({PARTS}) p JOIN unnest($3::bigint[], $4::int[], $5::int[]) AS w(seq, start, len) USING (seq)
        ORDER BY p.seq
        """,
        conversation_id, through_seq, [w[0] for w in wanted], [w[1] for w in wanted], [w[2] for w in wanted],
    )  # fmt: skip
    return HistoryPage(parts=[HistoryPart(seq=int(r["seq"]), data=bytes(r["data"])) for r in rows], next=next_cursor)
