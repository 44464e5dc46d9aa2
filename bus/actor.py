"""The Actor base: durable pull consumers, micro service endpoints, heartbeats, DLQ, drain.

Delivery rules (see docs/bus.md):
- a handler returns: ack;
- raises Retry(delay): nak with that delay;
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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import msgspec
import structlog
import uvloop
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from bus import subjects
from bus.client import Bus
from bus.codec import decode_union, encode
from bus.config import BusConfig
from bus.errors import BusError, Reject, Retry
from bus.headers import Header, Trace, use_trace
from bus.logging import configure_logging
from bus.streams import ConsumerSpec, ensure_consumer
from schemas._base import Message
from schemas.errors import ErrorCode, ErrorReply
from schemas.health import HealthCheck, HealthReport

__all__ = ["Actor", "Consumer", "Delivery", "Endpoint", "being_cancelled", "main"]

T = TypeVar("T")
log = structlog.get_logger("actor")

# nak delays by delivery count for unexpected errors (Retry carries its own delay)
BACKOFF_S = (0.2, 1.0, 5.0, 15.0, 30.0)


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where a consumed message came from and how often it has been delivered."""

    subject: str
    stream_seq: int
    num_delivered: int
    trace: Trace

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


@dataclass(frozen=True, slots=True)
class Endpoint(Generic[T]):
    """A request/reply endpoint on ab.<actor>.svc.<verb>, registered in the actor's micro service."""

    verb: str
    request: Any  # a Struct or a union of tagged Structs
    handler: Callable[[T, Trace], Awaitable[Message]]


class Actor:
    """Subclasses set `name`, return their routes, and open/close resources in on_start/on_stop."""

    name: ClassVar[subjects.ActorName]
    version: ClassVar[str] = "0.1.0"
    description: ClassVar[str] = ""

    def __init__(self, bus_config: BusConfig, *, drain_timeout_s: float = 10.0) -> None:
        self.bus_config = bus_config
        self.drain_timeout_s = drain_timeout_s
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{id(self) % 10_000}"
        self._bus: Bus | None = None
        self._service: Service | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._pulls: list[JetStreamContext.PullSubscription] = []
        self._inflight: dict[asyncio.Task[None], Msg] = {}
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
        self._bus = await Bus.connect(self.bus_config)
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
        for route in routes:
            match route:
                case Endpoint():
                    await self._service.add_endpoint(
                        name=route.verb,
                        subject=subjects.service(self.name, route.verb),
                        handler=self._endpoint_handler(route),
                    )
                case Consumer():
                    await ensure_consumer(self.bus.js, self.bus_config, route.spec)
                    sub = await self.bus.js.pull_subscribe_bind(
                        durable=route.spec.durable, stream=route.spec.stream.name
                    )
                    self._pulls.append(sub)
                    self._loops.append(asyncio.create_task(self._fetch_loop(route, sub)))
        await self.bus.barrier()  # the server knows every endpoint before start() returns: no "no responders"
        self._log.info("actor started", instance=self.instance)

    async def stop(self) -> None:
        """Stop fetching, let in-flight work finish (or nak it after the timeout), then drain."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        for sub in self._pulls:  # messages a cancelled fetch left behind are redelivered; drain must not wait on them
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self._inflight:
            self._log.info("draining in-flight messages", count=len(self._inflight))
            _, pending = await asyncio.wait(list(self._inflight), timeout=self.drain_timeout_s)
            for task in pending:
                task.cancel()  # the wrapper naks it, so another replica picks it up at once
            await asyncio.gather(*pending, return_exceptions=True)
        for task in list(self._owned):
            task.cancel()
        await asyncio.gather(*self._owned, return_exceptions=True)
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

    async def _fetch_loop(self, route: Consumer[Any], sub: JetStreamContext.PullSubscription) -> None:
        slots = asyncio.Semaphore(route.concurrency)
        while not self._stopping.is_set():
            await slots.acquire()
            free = 1
            while free < min(route.concurrency, 64) and not slots.locked():
                await slots.acquire()
                free += 1
            try:
                msgs = await sub.fetch(batch=free, timeout=5.0)
            except (TimeoutError, NatsTimeoutError):
                msgs = []
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a reconnect in progress: wait and fetch again
                self._log.warning("fetch failed", error=str(e))
                await asyncio.sleep(0.5)
                msgs = []
            for _ in range(free - len(msgs)):
                slots.release()
            for msg in msgs:
                task = asyncio.create_task(self._deliver(route, msg))
                self._inflight[task] = msg
                task.add_done_callback(lambda t: self._finished(t, slots))

    def _finished(self, task: asyncio.Task[None], slots: asyncio.Semaphore) -> None:
        self._inflight.pop(task, None)
        slots.release()

    async def _deliver(self, route: Consumer[Any], msg: Msg) -> None:
        meta = msg.metadata
        trace = Trace.from_headers(msg.headers)
        delivery = Delivery(
            subject=msg.subject, stream_seq=meta.sequence.stream, num_delivered=meta.num_delivered, trace=trace
        )
        use_trace(trace)
        structlog.contextvars.bind_contextvars(
            tenant=trace.tenant, correlation_id=trace.correlation_id, run_id=trace.run_id
        )
        started = time.perf_counter()
        try:
            body = decode_union(msg.data, route.inbox)
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            await self._dead_letter(msg, delivery, f"undecodable: {e}")
            return
        heartbeat = asyncio.create_task(self._heartbeat(msg))
        try:
            await route.handler(body, delivery)
        except Retry as e:
            await msg.nak(delay=e.delay)
            self._log.info("retry", subject=msg.subject, reason=e.reason, delay=e.delay)
        except Reject as e:
            await self._dead_letter(msg, delivery, e.reason)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        except Exception as e:
            if delivery.num_delivered >= self.bus_config.max_deliver:
                await self._dead_letter(msg, delivery, f"failed {delivery.num_delivered} times: {e!r}")
            else:
                delay = BACKOFF_S[min(delivery.num_delivered, len(BACKOFF_S)) - 1]
                self._log.exception("handler failed", subject=msg.subject, attempt=delivery.num_delivered)
                await msg.nak(delay=delay)
        else:
            await msg.ack_sync()
            self._log.debug("handled", subject=msg.subject, ms=round((time.perf_counter() - started) * 1000, 2))
        finally:
            heartbeat.cancel()

    async def _heartbeat(self, msg: Msg) -> None:
        interval = max(self.bus_config.ack_wait_s / 3, 0.2)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _dead_letter(self, msg: Msg, delivery: Delivery, reason: str) -> None:
        headers = dict(msg.headers or {})
        headers.pop(Header.MSG_ID.value, None)
        headers |= {
            Header.DEAD_REASON.value: reason[:2000],
            Header.DEAD_SUBJECT.value: msg.subject,
            Header.DEAD_STREAM_SEQ.value: str(delivery.stream_seq),
            Header.DEAD_DELIVERIES.value: str(delivery.num_delivered),
        }
        await self.bus.js.publish(subjects.dead_letter(self.name), msg.data, headers=headers)
        await msg.term()
        self._log.warning("dead-lettered", subject=msg.subject, reason=reason)

    # --- endpoints ---------------------------------------------------------------------------

    def _endpoint_handler(self, route: Endpoint[Any]) -> Callable[[Request], Awaitable[None]]:
        # nats-py runs a subscription's callbacks one after another: answer each in its own task
        async def dispatch(request: Request) -> None:
            self.spawn(handle(request))

        async def handle(request: Request) -> None:
            trace = Trace.from_headers(request.headers)
            use_trace(trace)
            structlog.contextvars.bind_contextvars(tenant=trace.tenant, correlation_id=trace.correlation_id)
            reply: Message
            try:
                body = decode_union(request.data, route.request)
                reply = await route.handler(body, trace)
            except (msgspec.ValidationError, msgspec.DecodeError) as e:
                reply = ErrorReply(code=ErrorCode.MALFORMED, message=str(e))
            except BusError as e:
                reply = e.reply()
            except Exception as e:
                self._log.exception("endpoint failed", verb=route.verb)
                reply = ErrorReply(code=ErrorCode.INTERNAL, message=f"{type(e).__name__}: {e}")
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
    """What `python -m actors.<name>` does: log as `name`, run the actor under uvloop until SIGTERM."""
    configure_logging(name)
    uvloop.install()
    asyncio.run(make(BusConfig.from_env()).run())
