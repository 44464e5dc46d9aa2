"""/v1/dead-letters: the caller tenant's dead letters (stream AB_DLQ), listed newest first, read, replayed or
discarded.

An actor dead-letters a message it gives up on (bus/actor.py `_dead_letter`): it publishes the original body,
with the original headers and the `Ab-Dead-*` ones (reason, original subject and sequence, deliveries), to
ab.dlq.<actor>. A letter is the caller's when its `Ab-Tenant` header names the caller's tenant and its
original subject names no other tenant (a publisher that lied in the header sees nothing of the tenant it
named). AB_DLQ's subjects carry no tenant, so a list walks the stream backwards in windows, reading headers
and keeping the tenant's; it looks at no more than MAX_SCAN letters a request, and then says where to go on
(`next_after`) even if the page is short.

Replay publishes the body again, with its original headers (less the `Ab-Dead-*` ones, and with a new
`Nats-Msg-Id`: the original's may still be inside the duplicate window) to its original subject, then removes
the letter; only a command the gateway itself may publish is replayed this way (a tenant's conversation,
task, research or run command). A dead event or a platform-internal command answers 409: replay it as
admin with the `nats` CLI (docs/bus.md). Discard removes the letter.

Removing a stored message is what no process role may do (bus/permissions.py DESTRUCTIVE) but this one: the
gateway role alone is granted `$JS.API.STREAM.MSG.DELETE.AB_DLQ` (its `deletes_from`), nothing wider. Replay
and discard need the `write` scope and are written to the audit log (gateway/audit_trail.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from datetime import datetime
from typing import Annotated, TypeVar

import msgspec
from litestar import Controller, delete, get, post
from litestar.params import FromPath, FromQuery, PathParameter, QueryParameter
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from bus import subjects
from bus.client import TRANSIENT
from bus.credentials import Role
from bus.errors import BusError
from bus.headers import Header
from bus.keys import Scope
from bus.permissions import ACCESS
from bus.streams import DLQ
from gateway.caller import Caller
from gateway.errors import ApiError
from gateway.state import Gateway
from schemas.errors import ErrorCode
from schemas.events import DeadLetter, DeadLetterPage, Replayed

__all__ = ["DeadLetterController", "letter_of", "tenant_counts"]

T = TypeVar("T")
WINDOW = 256  # letters read at once while walking back
MAX_SCAN = 4096  # letters looked at per list request
MAX_COUNTED = 10_000  # the newest letters a count looks at
FETCH_TIMEOUT_S = 3.0
DEAD_HEADERS = frozenset(
    {
        Header.DEAD_REASON.value,
        Header.DEAD_SUBJECT.value,
        Header.DEAD_STREAM_SEQ.value,
        Header.DEAD_DELIVERIES.value,
        Header.MSG_ID.value,
        "Nats-Stream-Source",
    }
)
WRITE = {"scope": Scope.WRITE.value}
LetterId = Annotated[int, PathParameter(ge=1, le=2**63 - 1, description="the dead letter's id (its AB_DLQ sequence)")]


def _subject_tenant(subject: str) -> str | None:
    """The tenant a command or event subject names (None: a subject that names none)."""
    claimed = subjects.command_tenant(subject)
    if claimed is not None:
        return claimed
    event = subjects.parse_event(subject)
    return event.tenant if event is not None else None


def letter_of(
    seq: int, subject: str, headers: dict[str, str], data: bytes, at: datetime, tenant: str
) -> DeadLetter | None:
    """The letter as the tenant sees it; None when it is not the tenant's (or not a dead letter)."""
    original = headers.get(Header.DEAD_SUBJECT.value, "")
    if headers.get(Header.TENANT.value) != tenant or _subject_tenant(original) not in (None, tenant):
        return None
    actor = subject.removeprefix(f"{subjects.PREFIX}.dlq.")
    if actor == subject:
        return None
    try:
        payload, text = msgspec.json.decode(data), None
    except msgspec.DecodeError:
        payload, text = None, data.decode(errors="replace")
    deliveries = headers.get(Header.DEAD_DELIVERIES.value, "")
    return DeadLetter(
        id=seq,
        actor=actor,
        subject=original,
        reason=headers.get(Header.DEAD_REASON.value, ""),
        deliveries=int(deliveries) if deliveries.isdigit() else 0,
        headers=dict(headers),
        payload=payload,
        payload_text=text,
        dead_lettered_at=at.replace(microsecond=at.microsecond // 1000 * 1000),  # read alike however it was read
    )


async def _unavailable_on_failover(call: Awaitable[T]) -> T:
    try:
        return await call
    except TRANSIENT as e:
        raise BusError(ErrorCode.UNAVAILABLE, "JetStream did not answer: try again later") from e


async def _window(gw: Gateway, filter_subject: str, lo: int, hi: int, *, headers_only: bool = False) -> list[Msg]:
    """The letters on `filter_subject` with lo <= sequence < hi, oldest first (`headers_only`: without bodies)."""
    config = ConsumerConfig(
        headers_only=headers_only or None,
        filter_subject=filter_subject,
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=lo,
        inactive_threshold=10.0,  # deleted below; this only backs that up
        mem_storage=True,
    )
    js = gw.bus.js
    info = await _unavailable_on_failover(js.add_consumer(DLQ.name, config))
    found: list[Msg] = []
    try:
        pending = info.num_pending or 0
        if not pending:
            return found
        sub = await js.pull_subscribe_bind(info.name, stream=DLQ.name)
        try:
            while pending:
                msgs = await _unavailable_on_failover(sub.fetch(min(pending, WINDOW), timeout=FETCH_TIMEOUT_S))
                for msg in msgs:
                    if msg.metadata.sequence.stream >= hi:
                        return found
                    found.append(msg)
                pending = msgs[-1].metadata.num_pending if msgs else 0
        finally:
            await sub.unsubscribe()
    finally:
        with contextlib.suppress(Exception):  # it expires anyway once unused
            await js.delete_consumer(DLQ.name, info.name)
    return found


async def _page(
    gw: Gateway, tenant: str, actor: subjects.ActorName | None, after: int | None, limit: int
) -> DeadLetterPage:
    state = (await _unavailable_on_failover(gw.bus.js.stream_info(DLQ.name))).state
    first = max(state.first_seq, 1)
    hi = state.last_seq + 1 if after is None else min(after, state.last_seq + 1)
    filter_subject = subjects.dead_letter(actor) if actor is not None else subjects.dead_letters()
    found: list[DeadLetter] = []
    scanned = 0
    while hi > first and len(found) <= limit and scanned < MAX_SCAN:
        lo = max(first, hi - WINDOW)
        mine = []
        for msg in await _window(gw, filter_subject, lo, hi):
            letter = letter_of(
                msg.metadata.sequence.stream,
                msg.subject,
                dict(msg.headers or {}),
                msg.data,
                msg.metadata.timestamp,
                tenant,
            )
            if letter is not None:
                mine.append(letter)
        found.extend(reversed(mine))
        scanned += hi - lo
        hi = lo
    if len(found) > limit:
        return DeadLetterPage(dead_letters=found[:limit], next_after=found[limit - 1].id)
    return DeadLetterPage(dead_letters=found, next_after=hi if hi > first else None)


async def tenant_counts(gw: Gateway, tenant: str) -> dict[str, int]:
    """How many of the newest MAX_COUNTED dead letters are the tenant's, per actor."""
    state = (await _unavailable_on_failover(gw.bus.js.stream_info(DLQ.name))).state
    if not state.messages:
        return {}
    lo = max(state.first_seq, state.last_seq - MAX_COUNTED + 1, 1)
    counts: dict[str, int] = {}
    for msg in await _window(gw, subjects.dead_letters(), lo, state.last_seq + 1, headers_only=True):
        headers = dict(msg.headers or {})
        if letter_of(msg.metadata.sequence.stream, msg.subject, headers, b"", msg.metadata.timestamp, tenant):
            actor = msg.subject.removeprefix(f"{subjects.PREFIX}.dlq.")
            counts[actor] = counts.get(actor, 0) + 1
    return counts


async def _letter(gw: Gateway, tenant: str, seq: int) -> DeadLetter:
    """The tenant's letter `seq`; 404 for one that is gone or another tenant's."""
    try:
        raw = await gw.bus.js.get_msg(DLQ.name, seq)
    except NotFoundError:
        raw = None
    letter = None
    if raw is not None and raw.subject and raw.time is not None:
        letter = letter_of(seq, raw.subject, dict(raw.headers or {}), raw.data or b"", raw.time, tenant)
    if letter is None:
        raise ApiError(ErrorCode.NOT_FOUND, f"no dead letter {seq}")
    return letter


def _replayable(subject: str, tenant: str) -> bool:
    """A command of the tenant's that the gateway may publish (its permissions say which)."""
    sends = ACCESS[Role.GATEWAY].sends
    return subjects.command_tenant(subject) == tenant and any(subjects.pattern_matches(p, subject) for p in sends)


async def _remove(gw: Gateway, seq: int) -> None:
    with contextlib.suppress(NotFoundError):  # removed meanwhile (a replay or discard at the same moment)
        await _unavailable_on_failover(gw.bus.js.delete_msg(DLQ.name, seq))


class DeadLetterController(Controller):
    path = "/v1/dead-letters"
    tags = ["dead letters"]

    @get("/", summary="The tenant's dead letters, newest first (`actor`: only that actor's)")
    async def list_dead_letters(
        self,
        caller: Caller,
        actor: FromQuery[subjects.ActorName | None] = None,
        after: Annotated[int | None, QueryParameter(ge=0, le=2**63 - 1, description="older than this id")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
    ) -> DeadLetterPage:
        return await _page(caller.gateway, caller.tenant, actor, after, limit)

    @get("/{dead_letter_id:int}", summary="One dead letter: why, from where, its headers and body")
    async def get_dead_letter(self, caller: Caller, dead_letter_id: FromPath[LetterId]) -> DeadLetter:
        return await _letter(caller.gateway, caller.tenant, dead_letter_id)

    @post(
        "/{dead_letter_id:int}/replay",
        status_code=202,
        opt=WRITE,
        summary="Publish the dead letter again to its original subject (with its original headers), then remove it",
    )
    async def replay_dead_letter(self, caller: Caller, dead_letter_id: FromPath[LetterId]) -> Replayed:
        gw = caller.gateway
        letter = await _letter(gw, caller.tenant, dead_letter_id)
        if not _replayable(letter.subject, caller.tenant):
            raise ApiError(
                ErrorCode.CONFLICT,
                f"{letter.subject or 'a letter without Ab-Dead-Subject'} is not a command the gateway replays: "
                "replay it as admin with the nats CLI (docs/bus.md), or discard it",
            )
        raw = await gw.bus.js.get_msg(DLQ.name, dead_letter_id)
        headers = {k: v for k, v in (raw.headers or {}).items() if k not in DEAD_HEADERS}
        headers[Header.MSG_ID.value] = f"dlq-replay-{dead_letter_id}"  # a retried replay is stored once
        ack = await gw.bus.js.publish(letter.subject, raw.data or b"", headers=headers)
        await _remove(gw, dead_letter_id)
        return Replayed(id=dead_letter_id, subject=letter.subject, replayed_as=ack.seq)

    @delete("/{dead_letter_id:int}", opt=WRITE, summary="Discard the dead letter")
    async def discard_dead_letter(self, caller: Caller, dead_letter_id: FromPath[LetterId]) -> None:
        gw = caller.gateway
        await _letter(gw, caller.tenant, dead_letter_id)
        await _remove(gw, dead_letter_id)
