"""The Actor base: durable pull consumers, micro service endpoints, heartbeats, DLQ, drain.

Delivery rules (see docs/bus.md):
- a handler returns: ack;
- raises Retry(delay): nak with that delay (never dead-lettered for it; a `waiting` one's deliveries are not
  counted toward `max_deliver` either, by the replica that saw them);
- raises Reject(reason), or the body does not decode: term, and the message goes to
  ab.dlq.<actor> with the reason in headers;
- raises anything else: nak with backoff; after `max_deliver` deliveries, dead-letter it.
Long handlers are kept alive with in-progress heartbeats every ack_wait / 3.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, ClassVar, Generic, TypeVar

import msgspec
import structlog
import uvloop
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from bus import metrics, subjects, tracing
from bus.client import Bus
from bus.codec import decode_union, encode
from bus.config import BusConfig
from bus.credentials import Role
from bus.errors import BusError, Reject, Retry
from bus.headers import Header, Trace, use_trace
from bus.logging import configure_logging
from bus.pull import Pull
from bus.streams import ConsumerSpec, ensure_consumer
from bus.tasks import cancel_and_wait
from schemas._base import Message
from schemas.errors import ErrorCode, ErrorReply
from schemas.health import HealthCheck, HealthReport

__all__ = ["Actor", "Consumer", "Delivery", "Endpoint", "being_cancelled", "main"]

T = TypeVar("T")
log = structlog.get_logger("actor")

# nak delays by delivery count for unexpected errors (Retry carries its own delay)
BACKOFF_S = (0.2, 1.0, 5.0, 15.0, 30.0)
WAITS_KEPT = 10_000  # messages whose waits a replica remembers


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where a consumed message came from and how often it has been delivered."""

    subject: str
    stream_seq: int
    num_delivered: int
    trace: Trace
    stream: str = ""
    msg_id: str | None = None  # the publisher's Nats-Msg-Id
    timestamp: datetime | None = None  # when the stream stored it

    @property
    def tenant(self) -> str:
        return self.trace.tenant


@dataclass(frozen=True, slots=True)
class Consumer(Generic[T]):
    """A durable pull consumer: messages on `spec` decode as `inbox` and go to `handler`."""

    spec: ConsumerSpec
    inbox: Any  # a Struct or a union of tagged Structs; the handler's parameter type says which
    handler: Callable[[T, Delivery], Awaitable[None]]
    concurrency: int = 64
    # wait for the server to confirm each ack: for a consumer whose next message reads the stream
    # and must no longer see this one (the conversation's ordering check). A plain ack that is lost
    # only means a redelivery, which every handler takes as a repeat.
    sync_ack: bool = False


@dataclass(frozen=True, slots=True)
class Endpoint(Generic[T]):
    """A request/reply endpoint on ab.<actor>.svc.<verb>, registered in the actor's micro service."""

    verb: str
    request: Any  # a Struct or a union of tagged Structs
    handler: Callable[[T, Trace], Awaitable[Message]]


@dataclass(frozen=True, slots=True)
class _Consuming:
    """One durable consumer being pulled here: its pull, the loop handing its messages over, and
    the flag that stops that loop."""

    stream: str
    pull: Pull
    loop: asyncio.Task[None]
    stop: asyncio.Event


class Actor:
    """Subclasses set `name`, return their routes, and open/close resources in on_start/on_stop."""

    name: ClassVar[subjects.ActorName]
    role: ClassVar[Role | None] = None  # whose NATS credential it connects with; None: the one named `name`
    version: ClassVar[str] = "0.1.0"
    description: ClassVar[str] = ""
    # errors that mean "a dependency is down, ask again later" (an endpoint answers `unavailable`)
    unavailable_errors: ClassVar[tuple[type[Exception], ...]] = (OSError, TimeoutError)

    def __init__(self, bus_config: BusConfig, *, drain_timeout_s: float = 10.0) -> None:
        self.bus_config = bus_config
        self.drain_timeout_s = drain_timeout_s
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{id(self) % 10_000}"
        self._bus: Bus | None = None
        self._service: Service | None = None
        self._consuming: dict[str, _Consuming] = {}
        self._consumers_lock = asyncio.Lock()
        self._inflight: dict[asyncio.Task[None], Msg] = {}
        self._waits: OrderedDict[tuple[str, int], int] = OrderedDict()  # (stream, seq) -> deliveries it waited
        self._owned: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()
        self._stopped = False
        self._log = log.bind(actor=self.name.value)

    # --- hooks -------------------------------------------------------------------------------

    def routes(self) -> Sequence[Consumer[Any] | Endpoint[Any]]:
        return ()

    async def on_start(self) -> None:
        """Open pools, apply migrations. Runs after the bus connects, before consuming starts."""

    async def on_stop(self) -> None:
        """Close what on_start opened. Runs after in-flight work is finished or handed back."""

    async def on_dead_letter(self, body: object | None, delivery: Delivery, reason: str) -> None:
        """A message was dead-lettered: end the entity it was about visibly (e.g. mark it `failed`).

        `body` is the decoded message, or None if it did not decode. Called after the message is in
        the DLQ; an error here is logged and never undoes the dead-lettering.
        """

    async def health_checks(self) -> dict[str, str]:
        """Dependency name -> 'ok' or the error text; /health shows these."""
        return {}

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            raise RuntimeError(f"{self.name} actor is not started")
        return self._bus

    async def start(self) -> None:
        self._bus = await Bus.connect(self.bus_config, role=self.role or Role(self.name.value))
        await self.on_start()
        routes = list(self.routes())
        self._service = await add_service(
            self.bus.nc,
            name=f"agentbus-{self.name.value}",
            version=self.version,
            description=self.description or f"agentbus {self.name.value} actor",
            metadata={"instance": self.instance},
        )
        routes.append(Endpoint("health", HealthCheck, self._health))
        health = self._endpoint_handler(Endpoint("health", HealthCheck, self._health))
        # this replica's own, so an operator's status asks each replica found by PING (gateway/status.py)
        await self._service.add_endpoint(
            name="health_instance", subject=subjects.instance_health(self.name, self._service.id), handler=health
        )
        for route in routes:
            match route:
                case Endpoint():
                    await self._service.add_endpoint(
                        name=route.verb,
                        subject=subjects.service(self.name, route.verb),
                        handler=self._endpoint_handler(route),
                    )
                case Consumer():
                    await self.add_consumer(route)
        await self.bus.barrier()  # the server knows every endpoint before start() returns: no "no responders"
        if self.bus_config.metrics_interval_s > 0:
            self.spawn(self._observe_consumers(self.bus_config.metrics_interval_s), name="consumer metrics")
        self._log.info("actor started", instance=self.instance)

    async def stop(self) -> None:
        """Stop fetching, let in-flight work finish (or nak it after the timeout), then drain."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        for durable in list(self._consuming):  # what a pull had not handed over is redelivered
            await self.remove_consumer(durable)
        if self._inflight:
            self._log.info("draining in-flight messages", count=len(self._inflight))
            _, pending = await asyncio.wait(list(self._inflight), timeout=self.drain_timeout_s)
            await cancel_and_wait(*pending)  # the wrapper naks each, so another replica picks it up at once
        await cancel_and_wait(*self._owned)
        if self._service is not None:
            with contextlib.suppress(Exception):
                await self._service.stop()
        await self.on_stop()
        if self._bus is not None:
            await self._bus.close()
        self._log.info("actor stopped")

    async def run(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then stop gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        await self.start()
        await self._stopping.wait()
        await self.stop()

    def spawn(self, coro: Awaitable[Any], *, name: str | None = None) -> asyncio.Task[Any]:
        """Run `coro` as a task the actor owns: cancelled on stop, never silently lost."""

        async def runner() -> Any:
            return await coro

        task = asyncio.create_task(runner(), name=name)
        self._owned.add(task)
        task.add_done_callback(self._owned.discard)
        return task

    # --- consuming ---------------------------------------------------------------------------

    async def add_consumer(self, route: Consumer[Any]) -> None:
        """Create (or update) the route's durable consumer and start consuming it now.

        For consumers that come and go while the actor runs (e.g. one per trigger); a durable
        already consumed here is replaced."""
        async with self._consumers_lock:  # two calls for one durable must not leave a pull untracked
            await self._remove_consumer(route.spec.durable)
            await ensure_consumer(self.bus.js, self.bus_config, route.spec)
            pull = Pull(self.bus.nc, stream=route.spec.stream.name, durable=route.spec.durable)
            await pull.start()
            stop = asyncio.Event()
            loop = asyncio.create_task(self._consume(route, pull, stop))
            self._consuming[route.spec.durable] = _Consuming(route.spec.stream.name, pull, loop, stop)

    async def remove_consumer(self, durable: str, *, delete_from: str | None = None) -> None:
        """Stop consuming `durable` (its in-flight messages finish); with `delete_from` (the stream
        name), also delete the consumer from JetStream."""
        async with self._consumers_lock:
            await self._remove_consumer(durable)
        if delete_from is not None:
            with contextlib.suppress(NotFoundError):
                await self.bus.js.delete_consumer(delete_from, durable)

    async def _remove_consumer(self, durable: str) -> None:
        entry = self._consuming.pop(durable, None)
        if entry is None:
            return
        entry.stop.set()  # checked by the loop: a cancel swallowed inside nats-py's wait_for cannot keep it going
        await entry.pull.stop()  # messages it had not handed over are redelivered after ack_wait
        await cancel_and_wait(entry.loop)
        for gauge in (metrics.CONSUMER_PENDING, metrics.CONSUMER_ACK_PENDING, metrics.CONSUMER_REDELIVERED):
            with contextlib.suppress(KeyError):
                gauge.remove(entry.stream, durable)

    async def _observe_consumers(self, interval_s: float) -> None:
        """The backlog gauges, from each consumer's info every `interval_s` (never per message)."""
        while True:
            for durable, entry in list(self._consuming.items()):
                try:
                    info = await self.bus.js.consumer_info(entry.stream, durable)
                except Exception as e:  # a reconnect, or the consumer just removed: the next round tells
                    self._log.debug("consumer info failed", durable=durable, error=repr(e))
                    continue
                if durable not in self._consuming:
                    continue
                metrics.CONSUMER_PENDING.labels(entry.stream, durable).set(info.num_pending or 0)
                metrics.CONSUMER_ACK_PENDING.labels(entry.stream, durable).set(info.num_ack_pending or 0)
                metrics.CONSUMER_REDELIVERED.labels(entry.stream, durable).set(info.num_redelivered or 0)
            await asyncio.sleep(interval_s)

    async def _consume(self, route: Consumer[Any], pull: Pull, stop: asyncio.Event) -> None:
        """Hand each message to its own task as it arrives, with at most `concurrency` at once."""
        running: set[asyncio.Task[None]] = set()
        room_freed = asyncio.Event()

        def finished(task: asyncio.Task[None]) -> None:
            running.discard(task)
            self._inflight.pop(task, None)
            room_freed.set()

        while not (self._stopping.is_set() or stop.is_set()):
            room = route.concurrency - len(running)
            if room <= 0:
                room_freed.clear()
                await room_freed.wait()
                continue
            try:
                msg = await pull.next(room)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a reconnect in progress: wait and pull again
                self._log.warning("pull failed", durable=route.spec.durable, error=str(e))
                await asyncio.sleep(0.5)
                continue
            if msg is None:
                continue
            task = asyncio.create_task(self._deliver(route, msg))
            running.add(task)
            self._inflight[task] = msg
            task.add_done_callback(finished)

    async def _deliver(self, route: Consumer[Any], msg: Msg) -> None:
        """Decode, handle, then settle the message; every failure is handled and logged here once."""
        meta = msg.metadata
        trace = Trace.from_headers(msg.headers)
        delivery = Delivery(
            subject=msg.subject,
            stream_seq=meta.sequence.stream,
            num_delivered=meta.num_delivered,
            trace=trace,
            stream=meta.stream,
            msg_id=(msg.headers or {}).get(Header.MSG_ID.value),
            timestamp=meta.timestamp,
        )
        use_trace(trace)
        structlog.contextvars.bind_contextvars(
            tenant=trace.tenant, correlation_id=trace.correlation_id, run_id=trace.run_id
        )
        kind = metrics.subject_kind(msg.subject)
        if not tracing.enabled():
            await self._handle(route, msg, delivery, kind)
            return
        attributes = {
            "agentbus.actor": self.name.value,
            "agentbus.tenant": trace.tenant,
            "agentbus.correlation_id": trace.correlation_id,
            "agentbus.run_id": trace.run_id or "",
            "messaging.system": "nats",
            "messaging.destination.name": msg.subject,
            "messaging.consumer.group.name": route.spec.durable,
            "messaging.message.delivery_count": delivery.num_delivered,
        }
        with tracing.consumed(f"handle {kind}", msg.headers, attributes) as span:
            outcome = await self._handle(route, msg, delivery, kind)
            tracing.ended(span, outcome, failed=outcome in ("failed", "dead_lettered"))

    async def _handle(self, route: Consumer[Any], msg: Msg, delivery: Delivery, kind: str) -> str:
        """Decode, handle, settle; how it ended (the `outcome` of the metrics)."""
        trace = delivery.trace
        started = time.perf_counter()
        actor = self.name.value
        claimed = subjects.command_tenant(msg.subject)
        if claimed is not None and claimed != trace.tenant:  # a publisher may not act for another tenant
            header = Header.TENANT.value
            reason = f"tenant mismatch: the subject names {claimed!r}, the {header} header {trace.tenant!r}"
            await self._settle_logged(partial(self._dead_letter, msg, None, delivery, reason), msg)
            metrics.MESSAGES.labels(actor, kind, "dead_lettered").inc()
            return "dead_lettered"
        try:
            body = decode_union(msg.data, route.inbox)
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            await self._settle_logged(partial(self._dead_letter, msg, None, delivery, f"undecodable: {e}"), msg)
            metrics.MESSAGES.labels(actor, kind, "dead_lettered").inc()
            return "dead_lettered"
        heartbeat = asyncio.create_task(self._heartbeat(msg))
        outcome = "acked"
        try:
            await route.handler(body, delivery)
        except Retry as e:
            outcome = "retried"
            self._log.info("retry", subject=msg.subject, reason=e.reason, delay=e.delay)
            if e.waiting:
                self._waited(delivery)
            await self._settle_logged(partial(msg.nak, delay=e.delay), msg)
        except Reject as e:
            outcome = "dead_lettered"
            await self._settle_logged(partial(self._dead_letter, msg, body, delivery, e.reason), msg)
        except asyncio.CancelledError:
            outcome = "cancelled"
            with contextlib.suppress(Exception):
                await msg.nak()  # another replica picks it up at once
            raise
        except Exception as e:
            failures = delivery.num_delivered - self._waits.get((delivery.stream, delivery.stream_seq), 0)
            if failures >= self.bus_config.max_deliver:
                outcome = "dead_lettered"
                reason = f"failed {delivery.num_delivered} times: {e!r}"
                await self._settle_logged(partial(self._dead_letter, msg, body, delivery, reason), msg)
            else:
                outcome = "failed"
                delay = BACKOFF_S[min(max(failures, 1), len(BACKOFF_S)) - 1]
                self._log.exception("handler failed", subject=msg.subject, attempt=delivery.num_delivered)
                await self._settle_logged(partial(msg.nak, delay=delay), msg)
        else:
            self._waits.pop((delivery.stream, delivery.stream_seq), None)
            await self._settle_logged(msg.ack_sync if route.sync_ack else msg.ack, msg)
            self._log.debug("handled", subject=msg.subject, ms=round((time.perf_counter() - started) * 1000, 2))
        finally:
            heartbeat.cancel()
            metrics.MESSAGES.labels(actor, kind, outcome).inc()
            metrics.HANDLER_SECONDS.labels(actor, kind).observe(time.perf_counter() - started)
        return outcome

    def _waited(self, delivery: Delivery) -> None:
        key = (delivery.stream, delivery.stream_seq)
        self._waits[key] = self._waits.pop(key, 0) + 1
        while len(self._waits) > WAITS_KEPT:
            self._waits.popitem(last=False)

    async def _settle_logged(self, settling: Callable[[], Awaitable[Any]], msg: Msg) -> None:
        """Ack, nak or dead-letter; if NATS is away the message stays unacked and is redelivered
        after ack_wait, so a failure here is logged, not raised into a task nobody awaits."""
        try:
            await settling()
        except Exception as e:
            self._log.warning("could not settle a message: it will be redelivered", subject=msg.subject, error=repr(e))

    async def _heartbeat(self, msg: Msg) -> None:
        interval = max(self.bus_config.ack_wait_s / 3, 0.2)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _dead_letter(self, msg: Msg, body: object | None, delivery: Delivery, reason: str) -> None:
        headers = dict(msg.headers or {})
        headers |= {
            # a term that fails after the publish redelivers it: dead-lettered again, stored once
            Header.MSG_ID.value: f"dlq-{delivery.stream}-{delivery.stream_seq}",
            Header.DEAD_REASON.value: reason[:2000],
            Header.DEAD_SUBJECT.value: msg.subject,
            Header.DEAD_STREAM_SEQ.value: str(delivery.stream_seq),
            Header.DEAD_DELIVERIES.value: str(delivery.num_delivered),
        }
        await self.bus.js.publish(subjects.dead_letter(self.name), msg.data, headers=headers)
        await msg.term()
        metrics.DEAD_LETTERS.labels(self.name.value, metrics.dead_letter_class(reason)).inc()
        self._log.warning("dead-lettered", subject=msg.subject, reason=reason)
        try:
            await self.on_dead_letter(body, delivery, reason)
        except Exception:
            self._log.exception("on_dead_letter failed", subject=msg.subject)

    # --- endpoints ---------------------------------------------------------------------------

    def _endpoint_handler(self, route: Endpoint[Any]) -> Callable[[Request], Awaitable[None]]:
        # nats-py runs a subscription's callbacks one after another: answer each in its own task
        async def dispatch(request: Request) -> None:
            self.spawn(handle(request))

        async def handle(request: Request) -> None:
            if not tracing.enabled():
                await answer(request)
                return
            attributes = {"agentbus.actor": self.name.value, "rpc.system": "nats", "rpc.method": route.verb}
            with tracing.served(f"serve {self.name.value}.{route.verb}", request.headers, attributes):
                await answer(request)

        async def answer(request: Request) -> None:
            trace = Trace.from_headers(request.headers)
            use_trace(trace)
            structlog.contextvars.bind_contextvars(tenant=trace.tenant, correlation_id=trace.correlation_id)
            reply: Message
            try:
                body = decode_union(request.data, route.request)
                reply = await route.handler(body, trace)
            except msgspec.ValidationError as e:  # well-formed, but a value is out of bounds
                reply = ErrorReply(code=ErrorCode.INVALID, message=str(e))
            except msgspec.DecodeError as e:
                reply = ErrorReply(code=ErrorCode.MALFORMED, message=str(e))
            except BusError as e:
                reply = e.reply()
            except self.unavailable_errors:
                self._log.exception("endpoint failed: a dependency is unavailable", verb=route.verb)
                reply = ErrorReply(code=ErrorCode.UNAVAILABLE, message=f"{self.name.value} cannot serve this now")
            except Exception:  # the text stays in the log: a reply never carries an exception's text
                self._log.exception("endpoint failed", verb=route.verb)
                reply = ErrorReply(code=ErrorCode.INTERNAL, message=f"{self.name.value} failed to answer {route.verb}")
            await request.respond(encode(reply))

        return dispatch

    async def _health(self, _: HealthCheck, __: Trace) -> Message:
        try:
            checks = await self.health_checks()
        except Exception as e:
            checks = {"self": repr(e)}
        return HealthReport(
            actor=self.name.value,
            instance=self.instance,
            ok=all(v == "ok" for v in checks.values()),
            checks=checks,
        )


def being_cancelled() -> bool:
    """Whether the current task itself is being cancelled (the actor stopping), as opposed to a piece
    of work it awaits having been cancelled (a run's or a job's own cancel)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def main(name: str, make: Callable[[BusConfig], Actor]) -> None:
    """What `python -m actors.<name>` does: log as `name`, serve /metrics if AGENTBUS_METRICS_PORT says so,
    run the actor under uvloop until SIGTERM."""
    configure_logging(name)
    tracing.setup_tracing(f"agentbus-{name}")
    served = metrics.MetricsConfig.from_env()
    server = metrics.MetricsServer(served) if served.port else None
    if server is not None:
        server.start()
        log.info("serving metrics", actor=name, url=f"http://{served.host}:{server.port}/metrics")
    uvloop.install()
    try:
        asyncio.run(make(BusConfig.from_env()).run())
    finally:
        if server is not None:
            server.stop()
