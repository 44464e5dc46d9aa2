"""What the gateway's operator views answer over HTTP: the tenant's event feed (GET /v1/events, its WebSocket)
and its dead letters (/v1/dead-letters).

These are not bus messages (nothing publishes them): they are the JSON a client reads, kept here so a
client written in Python (the terminal CLI) decodes what the gateway encodes. Every field is always sent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

__all__ = ["DeadLetter", "DeadLetterPage", "Event", "Replayed"]


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One event of the tenant's feed, in the one order of stream AB_EVENTS."""

    id: int  # the feed's cursor: pass it as `after` (or Last-Event-ID) to read what came later
    type: str  # "<actor>.<kind>", from the subject: "executor.finished", "notifier.in_app", ...
    subject: str  # ab.<actor>.evt.<tenant>.<entity_id>.<kind>
    entity_id: str  # the run, task, research job or delivery it is about
    published_at: datetime  # when its actor published it
    data: Any  # the event's body as its actor wrote it (a JSON object tagged by its "type")


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A message an actor gave up on, with why, stored in AB_DLQ."""

    id: int  # its sequence in AB_DLQ
    actor: str  # the actor that dead-lettered it
    subject: str  # where it was consumed from, and where a replay publishes it
    reason: str
    deliveries: int  # how many times it was delivered before
    headers: dict[str, str]  # every header it carries (the Ab-Dead-* ones included)
    payload: Any  # the body when it is JSON, else None
    payload_text: str | None  # the body as text when it is not JSON (undecodable bytes replaced), else None
    dead_lettered_at: datetime


class DeadLetterPage(msgspec.Struct, frozen=True, kw_only=True):
    dead_letters: list[DeadLetter]  # newest first
    next_after: int | None  # older ones may be stored before this id: pass it as `after`


class Replayed(msgspec.Struct, frozen=True, kw_only=True):
    id: int  # the dead letter's (now removed from AB_DLQ)
    subject: str  # where it was published again
    replayed_as: int  # its new sequence in the stream that keeps that subject
