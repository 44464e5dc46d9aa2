"""Steering a running turn: `ab.executor.svc.steer` stores a user message for a run still going, and the
replica running the run hands it to the agent at its next model request.

How (docs/protocol.md, "Steering"):
- The verb checks the run is the caller's tenant's and has not ended, stores the message (seq 1, 2, … per
  run; once per `message_id`) and broadcasts it on `ab.executor.ctl.steer.<tenant>.<run>` (core NATS,
  as a cancel is) unless it was given to the agent already.
- Each replica subscribes to every steer broadcast once (`CancelSignals`, reused); a run it runs has an
  `Inbox` registered for as long as it runs, before its record is written, so no message accepted for it
  is missed. The inbox puts each message in pydantic-ai's own pending-message queue (`RunContext.enqueue`,
  priority `asap`): pydantic-ai adds it to the next model request, or, if the model's answer would end the
  run, sends it in one more request; at a park it records it in the history the run parks with. So it
  lands in the run's `new_messages`, in order, and the conversation keeps it as part of the turn's history.
- A message counts as given once it has left that queue (seen before each model request, and at the run's
  end): the store marks it delivered and `Steered(delivered=True)` goes on the run's output.
- A run without steering costs no query: the store is read at the start only of a run re-done after a crash
  or resumed after a park (`catch_up`), for messages stored while no replica held its inbox. A message that
  comes after the agent's last request (the queue is closed) stays undelivered in the store.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import structlog
from pydantic_ai import RunContext
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.exceptions import UserError
from pydantic_ai.models import ModelRequestContext
from pydantic_ai.run import AgentRunResult

from actors.executor.output import OutputWriter
from actors.executor.steering_store import SteeringMessage, SteeringStore
from actors.executor.store import RunStore
from bus import subjects
from bus.actor import Endpoint
from bus.client import Bus
from bus.errors import BusError
from bus.headers import Trace
from bus.runs import CancelSignals
from schemas._base import Message
from schemas.approvals import Steered, SteerRun
from schemas.errors import ErrorCode
from schemas.runs import RunStatus

__all__ = ["Inbox", "Steering", "steering_endpoint"]

log = structlog.get_logger("executor")
ENDED = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})


class Steering:
    """One replica's steering: the store, the broadcasts, the inbox of each run it runs."""

    def __init__(self, bus: Bus, store: SteeringStore, runs: RunStore) -> None:
        self.bus = bus
        self.store = store
        self.runs = runs
        self._signals = CancelSignals(bus, subjects.executor_steers(), SteerRun, lambda s: s.run_id)
        self._inboxes: dict[str, Inbox] = {}  # the runs this replica runs

    async def start(self) -> None:
        await self._signals.start()

    async def stop(self) -> None:
        await self._signals.stop()

    @contextlib.contextmanager
    def watching(self, tenant: str, run_id: str) -> Iterator[Inbox]:
        """The run's inbox, given the run's broadcasts while the block runs."""
        inbox = Inbox(self.store, run_id)
        self._inboxes[run_id] = inbox
        try:
            with self._signals.watching(tenant, run_id, inbox.offer):
                yield inbox
        finally:
            self._inboxes.pop(run_id, None)

    def queued(self, run_id: str) -> int:
        """How many of the run's messages wait in its agent's queue here, not sent to the model yet (0 if this
        replica does not run it)."""
        inbox = self._inboxes.get(run_id)
        return len(inbox.queued) if inbox is not None else 0

    async def pending(self, run_id: str) -> list[SteeringMessage]:
        """The run's messages not given to the agent yet, in order (a resumed run is given them)."""
        return await self.store.pending(run_id)

    async def steer(self, command: SteerRun, tenant: str) -> Steered:
        record = await self.runs.get(command.run_id, tenant)
        if record is None:
            raise BusError(ErrorCode.NOT_FOUND, f"no run {command.run_id}")
        if record.status in ENDED:
            raise BusError(ErrorCode.CONFLICT, "the run has ended", {"run_id": record.id, "status": record.status})
        message, _ = await self.store.add(command.run_id, command.message_id, command.content)
        if message.content != command.content:
            details = {"message_id": command.message_id}
            raise BusError(ErrorCode.CONFLICT, "the message id was used for another message of this run", details)
        if not message.delivered:  # again for a repeated one: a broadcast is not stored, and may have been missed
            signal = SteerRun(run_id=message.run_id, content=message.content, message_id=message.message_id)
            await self.bus.broadcast(subjects.executor_steer(tenant, command.run_id), signal)
        delivered = message.delivered
        return Steered(run_id=message.run_id, message_id=message.message_id, seq=message.seq, delivered=delivered)


class Inbox:
    """One run's steering messages on their way into its agent run (see the module's docstring)."""

    def __init__(self, store: SteeringStore, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self._ctx: RunContext[Any] | None = None  # the run's, once it has started: its queue takes messages
        self._waiting: list[SteerRun] = []  # come before the run started
        self._seen: set[str] = set()  # message ids offered
        self.queued: dict[str, str] = {}  # pydantic-ai's enqueue id -> message id, until it leaves the queue

    def offer(self, message: SteerRun) -> None:
        """A message for the run (a broadcast, or one read from the store): to the agent's queue, once."""
        if message.message_id in self._seen:
            return
        self._seen.add(message.message_id)
        if self._ctx is None:
            self._waiting.append(message)
            return
        self._enqueue(self._ctx, message)

    def capability(self, writer: OutputWriter, *, catch_up: bool) -> AbstractCapability[Any]:
        """The agent run's part: `catch_up` reads the messages stored while no replica held the inbox."""
        return _Deliver(self, writer, catch_up)

    async def open(self, ctx: RunContext[Any], *, catch_up: bool) -> None:
        """The run started: what came before it (and, with `catch_up`, what is stored) goes to its queue."""
        stored = await self.store.pending(self.run_id) if catch_up else []
        fresh = [_steer_of(m) for m in stored if m.message_id not in self._seen]
        self._seen.update(m.message_id for m in fresh)
        for message in fresh + self._waiting:  # stored ones first: they came first
            self._enqueue(ctx, message)
        self._waiting = []
        self._ctx = ctx

    def _enqueue(self, ctx: RunContext[Any], message: SteerRun) -> None:
        try:
            enqueue_id = ctx.enqueue(message.content, priority="asap")
        except UserError:  # the agent made its last request: the message stays undelivered
            log.info("steering message came after the run's last model request", message_id=message.message_id)
            return
        if enqueue_id is not None:
            self.queued[enqueue_id] = message.message_id

    async def settle(self, ctx: RunContext[Any], emit: Callable[[Message], None]) -> None:
        """Mark the messages that left pydantic-ai's queue (given to the model) delivered, and say so."""
        if not self.queued:
            return
        queued = {pending.enqueue_id for pending in ctx.pending_messages or ()}
        given = [enqueue_id for enqueue_id in self.queued if enqueue_id not in queued]
        if not given:
            return
        message_ids = [self.queued.pop(enqueue_id) for enqueue_id in given]
        for message in await self.store.delivered(self.run_id, message_ids):
            emit(Steered(run_id=self.run_id, message_id=message.message_id, seq=message.seq, delivered=True))


class _Deliver(AbstractCapability[Any]):
    """The inbox's hooks in the agent run: take the run's queue at its start, settle before each request
    and at its end."""

    def __init__(self, inbox: Inbox, writer: OutputWriter, catch_up: bool) -> None:
        self.inbox = inbox
        self.writer = writer
        self.catch_up = catch_up

    async def before_run(self, ctx: RunContext[Any]) -> None:
        await self.inbox.open(ctx, catch_up=self.catch_up)

    async def before_model_request(
        self, ctx: RunContext[Any], request_context: ModelRequestContext
    ) -> ModelRequestContext:
        await self.inbox.settle(ctx, self.writer.emit)
        return request_context

    async def after_run(self, ctx: RunContext[Any], *, result: AgentRunResult[Any]) -> AgentRunResult[Any]:
        await self.inbox.settle(ctx, self.writer.emit)
        return result


def _steer_of(message: SteeringMessage) -> SteerRun:
    return SteerRun(run_id=message.run_id, content=message.content, message_id=message.message_id)


def steering_endpoint(steering: Callable[[], Steering]) -> Endpoint[SteerRun]:
    """`steer`; `steering` is read on every request (it is made at start)."""

    async def answer(command: SteerRun, trace: Trace) -> Message:
        return await steering().steer(command, trace.tenant)

    return Endpoint("steer", SteerRun, answer)
