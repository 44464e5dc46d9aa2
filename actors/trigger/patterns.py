"""What a subject trigger may listen to, when an event matches it, and the ids its firings get.

A trigger listens only to its own tenant's stored events: its pattern must start with
`ab.<area>.evt.<tenant>.` where `<area>` is a literal token (so one events stream holds every
subject it can match). Patterns outside that are refused, not rewritten: a silent rewrite would
make a task listen to something other than what its owner wrote.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import msgspec

from bus import subjects
from bus.errors import BusError
from schemas.errors import ErrorCode

__all__ = [
    "check_subject",
    "consumer_name",
    "event_firing_id",
    "listens_to",
    "matches",
    "own_event",
    "webhook_firing_id",
]

CONSUMER_PREFIX = "trigger-task-"  # never `trigger-tasks`, the TaskChanged consumer


def listens_to(subject: str, tenant: str) -> bool:
    """Whether a trigger of `tenant` may listen to `subject`: only to its own tenant's events."""
    return subjects.pattern_tenant(subject) == tenant


def check_subject(subject: str, tenant: str) -> None:
    """BusError(invalid) unless `subject` is a pattern over `tenant`'s own events."""
    error = subjects.pattern_error(subject)
    if error is not None:
        raise BusError(ErrorCode.INVALID, error)
    if not listens_to(subject, tenant):
        raise BusError(
            ErrorCode.INVALID,
            f"a trigger subject must start with ab.<area>.evt.{tenant}. (a task listens only to its tenant's events)",
        )


def own_event(subject: str, tenant: str, task_id: str) -> bool:
    """An event the task itself caused (`ab.scheduler.evt.<tenant>.<task id>.…`): it never fires the task."""
    event = subjects.parse_event(subject)
    scheduler = subjects.ActorName.SCHEDULER.value
    return event is not None and (event.area, event.tenant, event.entity_id) == (scheduler, tenant, task_id)


def matches(event: Any, expected: Mapping[str, str]) -> bool:
    """Every dotted path in `expected` leads to a value whose text equals the expected text.

    A string compares as itself; anything else as its JSON (`2`, `true`, `null`, `{"a":1}`).
    A digit key indexes a list (`items.0.id`).
    """
    for path, want in expected.items():
        value = event
        for key in path.split("."):
            if isinstance(value, dict) and key in value:
                value = value[key]
            elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
                value = value[int(key)]
            else:
                return False
        text = value if isinstance(value, str) else msgspec.json.encode(value).decode()
        if text != want:
            return False
    return True


def consumer_name(task_id: str) -> str:
    """The durable JetStream consumer of one subject trigger, shared by every replica."""
    return CONSUMER_PREFIX + task_id


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:40]


def webhook_firing_id(task_id: str, webhook_id: str) -> str:
    """One firing per (task, webhook-id): a retried delivery of the same webhook maps to the same id."""
    return "wh-" + _digest(task_id, webhook_id)


def event_firing_id(task_id: str, stream: str, msg_id: str | None, seq: int, stored_at: str) -> str:
    """One firing per (task, event): the event's `Nats-Msg-Id` when it has one (the same event published
    twice fires once), else its place in the stream (sequence and stored time, which stay the same on
    redelivery and do not repeat if the stream is ever recreated)."""
    key = f"id:{msg_id}" if msg_id else f"seq:{seq}:{stored_at}"
    return "ev-" + _digest(task_id, stream, key)
