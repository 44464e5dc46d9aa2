"""The typed bus client: connect, publish, request, replay. Every actor and the gateway use it.

A JetStream write that meets a transient error (a stream or the meta group electing a leader, a
server being replaced) is retried with backoff (tenacity) for a bounded time, here at the edge, so no
caller records an election as a failure. See `JetStream`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

import msgspec
import nats
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    PubAck,
    RawStreamMsg,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.errors import BadRequestError, BucketNotFoundError, NoStreamResponseError, ServiceUnavailableError
from nats.js.kv import KeyValue
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

from bus import metrics, subjects, tracing
from bus.codec import decode_union, encode
from bus.config import BusConfig
from bus.credentials import Role, read_seed, seed_path
from bus.errors import BusError
from bus.headers import Header, Trace, current_trace, new_id
from bus.streams import ensure_streams
from schemas._base import Message
from schemas.errors import ErrorCode, ErrorReply

__all__ = ["TRANSIENT", "Bus", "Envelope", "JetStream", "KvChange"]


def _seed(config: BusConfig, role: Role) -> str | None:
    if config.nkey_seed_file:
        return read_seed(Path(config.nkey_seed_file)).decode()
    if config.credentials_dir:
        return read_seed(seed_path(Path(config.credentials_dir), role)).decode()
    return None


T = TypeVar("T")
log = structlog.get_logger("bus")

# What JetStream answers while a stream (or the meta group) has no leader, or while the connection
# moves to another server: nothing was stored, or after a timeout perhaps it was, which is why every
# publish carries a Nats-Msg-Id (a retry inside the duplicate window is stored once).
TRANSIENT: tuple[type[Exception], ...] = (
    NoStreamResponseError,
    NoRespondersError,
    NatsTimeoutError,
    TimeoutError,
    ServiceUnavailableError,
)
NO_SUITABLE_PEERS = 10005  # creating a replicated stream while a peer is (re)joining the cluster
PUBLISH_DEADLINE_S = 30.0  # a leader election takes a few seconds (up to ~10 after a kill -9)
PUBLISH_ATTEMPT_S = 2.0  # one attempt's wait for the ack; a slow ack is retried, and deduped
READ_DEADLINE_S = 3.0  # reads serve a waiting HTTP request: fail sooner, as 503
READ_ATTEMPT_S = 1.0


def _transient(e: BaseException) -> bool:
    """An error that goes away by itself once the cluster has settled (see TRANSIENT)."""
    if isinstance(e, BadRequestError):
        return e.err_code == NO_SUITABLE_PEERS
    return isinstance(e, TRANSIENT)


async def _with_retries(call: Callable[[], Awaitable[T]], *, deadline_s: float, what: str) -> T:
    """`call()`, retried with backoff (tenacity) on transient errors for `deadline_s`; then BusError(unavailable)."""
    try:
        return await call()  # the usual case: no retry machinery on the hot path
    except Exception as e:
        if not _transient(e):
            raise
        log.warning("jetstream busy, retrying", what=what, error=repr(e))
    started = time.monotonic()
    retrying = AsyncRetrying(
        retry=retry_if_exception(_transient),
        wait=wait_exponential_jitter(initial=0.05, max=1.0, jitter=0.05),
        stop=stop_after_delay(deadline_s),
        reraise=True,
    )
    try:
        result: T = await retrying(call)
    except Exception as e:
        if not _transient(e):
            raise
        log.error("jetstream unavailable", what=what, s=round(time.monotonic() - started, 2), error=repr(e))
        raise BusError(ErrorCode.UNAVAILABLE, f"JetStream did not answer ({what}) within {deadline_s:.0f}s") from e
    log.info("jetstream answered after retries", what=what, s=round(time.monotonic() - started, 2))
    return result


class JetStream(JetStreamContext):
    """nats-py's JetStream context with the transient errors of a failover retried at the edge.

    Every publish (the Bus's, a KV put, a dead letter) goes through `publish`, every stored-message
    read (a KV get) through `get_msg`, and every stream (or KV bucket) creation through `add_stream`,
    which also waits out "no suitable peers" while a node is still joining; each raises
    BusError(unavailable) once its deadline passes.
    """

    async def add_stream(self, config: StreamConfig | None = None, **params: Any) -> StreamInfo:
        async def once() -> StreamInfo:
            return await super(JetStream, self).add_stream(config, **params)

        name = config.name if config is not None else params.get("name")
        return await _with_retries(once, deadline_s=PUBLISH_DEADLINE_S, what=f"create stream {name}")

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float | None = None,
        stream: str | None = None,
        headers: dict[str, Any] | None = None,
        msg_ttl: float | None = None,
    ) -> PubAck:
        hdr = dict(headers or {})
        hdr.setdefault(Header.MSG_ID.value, new_id())  # a retried publish is stored once
        attempt_s = timeout if timeout is not None else min(self._timeout, PUBLISH_ATTEMPT_S)

        async def once() -> PubAck:
            return await super(JetStream, self).publish(subject, payload, attempt_s, stream, hdr, msg_ttl)

        return await _with_retries(once, deadline_s=PUBLISH_DEADLINE_S, what=f"publish to {subject}")

    async def get_msg(
        self,
        stream_name: str,
        seq: int | None = None,
        subject: str | None = None,
        direct: bool | None = False,
        next: bool | None = False,
    ) -> RawStreamMsg:
        async def once() -> RawStreamMsg:
            return await super(JetStream, self).get_msg(stream_name, seq, subject, direct, next)

        return await _with_retries(once, deadline_s=READ_DEADLINE_S, what=f"read from {stream_name}")


@dataclass(frozen=True, slots=True)
class Envelope(Generic[T]):
    """A decoded message with where it came from (stream sequence: the resume point)."""

    seq: int
    subject: str
    trace: Trace
    body: T


def _trace_for(trace: Trace | None) -> Trace:
    if trace is not None:
        return trace
    inherited = current_trace()
    if inherited is None:
        raise RuntimeError("publishing without a trace: pass trace= or run inside a handler")
    return inherited.child()


@dataclass(frozen=True, slots=True)
class KvChange:
    """A key's value in a KV bucket as `Bus.kv_watch` gives it; `value` is None once it is deleted or purged."""

    key: str
    value: bytes | None


class Bus:
    """One NATS connection with JetStream, and typed verbs on it."""

    def __init__(self, nc: NatsClient, config: BusConfig, role: Role = Role.ADMIN) -> None:
        self.nc = nc
        self.js: JetStreamContext = JetStream(nc, timeout=config.request_timeout_s)
        self.config = config
        self.role = role
        self._buckets: dict[tuple[str, bool], KeyValue] = {}

    @classmethod
    async def connect(cls, config: BusConfig, *, role: Role = Role.ADMIN, ensure: bool = True) -> Bus:
        """Connect to the cluster (any of `config.servers`) as `role`, reconnecting forever, and declare streams.

        The role's nkey seed comes from `config.nkey_seed_file`, else `<config.credentials_dir>/<role>.nk`;
        with neither the connection is anonymous (a nats-server without authorization). Replies come to
        the role's own inbox prefix, which its permissions let it alone read.
        """

        async def on_disconnect() -> None:
            log.warning("nats disconnected")

        async def on_reconnect() -> None:
            log.info("nats reconnected", url=str(nc.connected_url.netloc if nc.connected_url else ""))

        async def on_error(exc: Exception) -> None:
            log.warning("nats error", error=str(exc))

        seed = _seed(config, role)
        nc = await nats.connect(
            servers=list(config.servers),
            name=config.name,
            nkeys_seed_str=seed,
            inbox_prefix=subjects.inbox_prefix(role.value),
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=5,
            drain_timeout=5,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            error_cb=on_error,
        )
        bus = cls(nc, config, role)
        if ensure:
            await ensure_streams(bus.js, config, may_update=role is Role.ADMIN)
        return bus

    async def close(self) -> None:
        """Drain: finish in-flight subscriptions and flush what was published, then close."""
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:  # a connection that is already gone has nothing left to drain
                await self.nc.close()

    # --- publish ---------------------------------------------------------------------------

    async def publish(
        self, subject: str, message: Message, *, trace: Trace | None = None, msg_id: str | None = None
    ) -> int:
        """Publish to JetStream and wait for the stream's ack; returns the stream sequence.

        `msg_id` becomes `Nats-Msg-Id`, so a retried publish inside the duplicate window is stored once
        (without one, a fresh id still makes this call's own retries safe). Transient errors are retried
        for up to PUBLISH_DEADLINE_S; then BusError(unavailable).
        """
        headers = _trace_for(trace).headers(msg_id=msg_id)
        if not tracing.enabled():
            return (await self.js.publish(subject, encode(message), headers=headers)).seq
        kind = metrics.subject_kind(subject)
        with tracing.produced(subject, kind, headers, span=kind != "run.out"):  # not a span per output delta
            return (await self.js.publish(subject, encode(message), headers=headers)).seq

    async def broadcast(self, subject: str, message: Message, *, trace: Trace | None = None) -> None:
        """Core NATS publish (no storage): for signals every replica must see now, like a cancel."""
        headers = _trace_for(trace).headers()
        if not tracing.enabled():
            await self.nc.publish(subject, encode(message), headers=headers)
            return
        with tracing.produced(subject, metrics.subject_kind(subject), headers):
            await self.nc.publish(subject, encode(message), headers=headers)

    async def request(
        self,
        subject: str,
        message: Message,
        reply_type: type[T],
        *,
        trace: Trace | None = None,
        timeout: float | None = None,
    ) -> T:
        """Request/reply to a micro service endpoint; an ErrorReply comes back as BusError."""
        headers = _trace_for(trace).headers()
        span = tracing.requested(subject, headers) if tracing.enabled() else contextlib.nullcontext()
        try:
            with span:
                msg = await self.nc.request(
                    subject, encode(message), timeout=timeout or self.config.request_timeout_s, headers=headers
                )
        except NoRespondersError as e:
            raise BusError(ErrorCode.UNAVAILABLE, f"no service answers on {subject}") from e
        except (NatsTimeoutError, TimeoutError) as e:
            raise BusError(ErrorCode.TIMEOUT, f"no reply on {subject} in time") from e
        reply = decode_union(msg.data, reply_type | ErrorReply)
        if isinstance(reply, ErrorReply):
            raise BusError.from_reply(reply)
        result: T = reply
        return result

    # --- read --------------------------------------------------------------------------------

    async def replay(
        self,
        stream: str,
        subject: str,
        type_: Any,
        *,
        after_seq: int = 0,
        since: datetime | None = None,
        until: Callable[[Any], bool] | None = None,
    ) -> AsyncIterator[Envelope[Any]]:
        """Every message on `subject` after stream sequence `after_seq` (or stored at or after `since`), then
        the live tail.

        An ordered ephemeral consumer: gap-free and in order, recreated by nats-py if it stalls.
        Stops after yielding a message for which `until` is true.
        """
        if since is not None:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=since)
        else:
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE if after_seq else DeliverPolicy.ALL,
                opt_start_seq=after_seq + 1 if after_seq else None,
            )
        config.inactive_threshold = 30.0
        sub = await self.js.subscribe(subject, stream=stream, ordered_consumer=True, config=config, idle_heartbeat=5.0)
        try:
            while True:
                msg = await sub.next_msg(timeout=None)
                envelope = self._envelope(msg, type_)
                if envelope is None:
                    continue
                yield envelope
                if until is not None and until(envelope.body):
                    return
        finally:
            with contextlib.suppress(Exception):  # a closing connection; the ephemeral consumer expires anyway
                await sub.unsubscribe()

    def _envelope(self, msg: Msg, type_: Any) -> Envelope[Any] | None:
        try:
            body = decode_union(msg.data, type_)
        except (msgspec.ValidationError, msgspec.DecodeError):
            log.warning("undecodable message in replay", subject=msg.subject)
            return None
        seq = msg.metadata.sequence.stream if msg.reply else 0
        return Envelope(seq=seq, subject=msg.subject, trace=Trace.from_headers(msg.headers), body=body)

    async def barrier(self) -> None:
        """Return once the server has processed everything sent so far on this connection (e.g. the
        subscriptions just made). nats-py's flush() is no such barrier: it writes its PING ahead of
        commands still in the client's buffer. A message to ourselves queues behind them."""
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, max_msgs=1)
        try:
            await self.nc.publish(inbox, b"")
            await sub.next_msg(timeout=self.config.request_timeout_s)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def subscribe(self, subject: str) -> AsyncIterator[Msg]:
        """Core NATS subscription as an async iterator (events seen live, nothing replayed)."""
        sub = await self.nc.subscribe(subject)
        await self.barrier()
        try:
            async for msg in sub.messages:
                yield msg
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def key_value(
        self, bucket: str, *, ttl_s: float | None = None, history: int = 1, leader: bool = False, memory: bool = False
    ) -> KeyValue:
        """A JetStream KV bucket, created (file storage; `memory`: held in memory, for state a restart may lose,
        such as rate-limit counters) the first time; the handle is kept.

        Reads are direct gets, which every replica answers, so a stream leader election does not stop
        them; a replica may lag a moment behind a put, so `leader=True` gives a handle that reads from
        the stream leader (read-your-writes, e.g. for a key just created).
        """
        handle = self._buckets.get((bucket, leader))
        if handle is not None:
            return handle
        stream = f"KV_{bucket}"
        try:
            await self.js.key_value(bucket)  # checks that the stream is a KV bucket
        except BucketNotFoundError:
            await self.js.create_key_value(
                KeyValueConfig(
                    bucket=bucket,
                    ttl=ttl_s,
                    history=history,
                    storage=StorageType.MEMORY if memory else StorageType.FILE,
                    replicas=self.config.stream_replicas,
                    direct=True,
                )
            )
        else:
            info = await self.js.stream_info(stream)
            if not info.config.allow_direct and self.role is Role.ADMIN:  # a bucket made before reads were direct
                await self.js.update_stream(replace(info.config, allow_direct=True))
        for direct in (True, False):
            self._buckets[(bucket, not direct)] = KeyValue(
                name=bucket, stream=stream, pre=f"$KV.{bucket}.", js=self.js, direct=direct
            )
        return self._buckets[(bucket, leader)]

    async def kv_entries(self, bucket: str) -> dict[str, bytes]:
        """Every live key of a KV bucket and its value, read once (`kv_watch` up to its `None`)."""
        found: dict[str, bytes] = {}
        async with contextlib.aclosing(self.kv_watch(bucket)) as changes:
            async for change in changes:
                if change is None:
                    break
                if change.value is None:
                    found.pop(change.key, None)
                else:
                    found[change.key] = change.value
        return found

    async def kv_watch(self, bucket: str) -> AsyncGenerator[KvChange | None]:
        """The last value of every key of a KV bucket, then `None` once they are all given, then each change.

        Not nats-py's `keys()` or `watchall()` (2.16): their end-of-initial-values marker compares the server's
        pending count with how many values the client has handled so far, so with every value already sent
        but none handled yet they say "no keys" (nats-io/nats.py#842; seen in our CI: `keys()` right after a
        put raised NoKeysError). Here the consumer's info when it is made says how many values the snapshot
        holds (delivered + pending); `None` comes once that many arrived and the last says none are pending,
        not at the first that says so (a replica's pending count can touch 0 and rise again under concurrent
        writes: nats-io/nats.py#995). If values are purged meanwhile and fewer come, `None` comes once none
        has come for a request timeout. An ordered consumer: nats-py recreates it past the last value seen if
        it stalls or skips.
        """
        await self.key_value(bucket)
        sub = await self.js.subscribe(
            f"$KV.{bucket}.>",
            stream=f"KV_{bucket}",
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            inactive_threshold=30.0,
        )
        try:
            info = await sub.consumer_info()
            snapshot = (info.delivered.consumer_seq if info.delivered else 0) + (info.num_pending or 0)
            received = 0
            done = not snapshot
            if done:
                yield None
            prefix = len(f"$KV.{bucket}.")
            while True:
                try:
                    msg = await sub.next_msg(timeout=None if done else self.config.request_timeout_s)
                except NatsTimeoutError:  # fewer came than the snapshot held (purged meanwhile): that is all
                    done = True
                    yield None
                    continue
                received += 1
                operation = (msg.headers or {}).get("KV-Operation")
                gone = operation in ("DEL", "PURGE") or not msg.data
                yield KvChange(msg.subject[prefix:], None if gone else msg.data)
                if not done and received >= snapshot and msg.metadata.num_pending == 0:
                    done = True
                    yield None
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
