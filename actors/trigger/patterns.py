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
    "in_scope",
    "matches",
    "own_event",
    "subject_matches",
    "webhook_firing_id",
]

CONSUMER_PREFIX = "trigger-task-"  # never `trigger-tasks`, the TaskChanged consumer


def _pattern_error(subject: str) -> str | None:
    tokens = subject.split(".")
    for i, tok in enumerate(tokens):
        if not tok or any(c.isspace() for c in tok):
            return f"not a NATS subject pattern: {subject!r}"
        if ("*" in tok or ">" in tok) and len(tok) > 1:
            return f"a wildcard must be a whole token: {subject!r}"
        if tok == ">" and i != len(tokens) - 1:
            return f"`>` may only be the last token: {subject!r}"
    return None


def in_scope(subject: str, tenant: str) -> bool:
    """True if `subject` is a valid pattern inside `ab.<area>.evt.<tenant>.`."""
    if _pattern_error(subject) is not None:
        return False
    tokens = subject.split(".")
    return (
        len(tokens) >= 5
        and tokens[0] == subjects.PREFIX
        and tokens[1] not in ("*", ">")
        and tokens[2] == "evt"
        and tokens[3] == tenant
    )


def check_subject(subject: str, tenant: str) -> None:
    """BusError(invalid) unless `subject` is a pattern over `tenant`'s own events."""
    error = _pattern_error(subject)
    if error is not None:
        raise BusError(ErrorCode.INVALID, error)
    if not in_scope(subject, tenant):
        raise BusError(
            ErrorCode.INVALID,
            f"a trigger subject must start with ab.<area>.evt.{tenant}. (a task listens only to its tenant's events)",
        )


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: `*` is one token, a final `>` is one or more."""
    want, got = pattern.split("."), subject.split(".")
    for i, tok in enumerate(want):
        if tok == ">":
            return len(got) > i
        if i >= len(got) or (tok != "*" and tok != got[i]):
            return False
    return len(got) == len(want)


def own_event(subject: str, tenant: str, task_id: str) -> bool:
    """An event the task itself caused (`ab.scheduler.evt.<tenant>.<task id>.…`): it never fires the task."""
    tokens = subject.split(".")
    return len(tokens) >= 5 and tokens[1:5] == [subjects.ActorName.SCHEDULER.value, "evt", tenant, task_id]


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
