"""What the gateway holds while it runs: the bus, key watch, WebSocket tokens, audit trail, idempotency store
and turn waiters."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response
from litestar.datastructures import State
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from bus import subjects, tracing
from bus.client import Bus, Envelope
from bus.codec import decode_union
from bus.errors import BusError
from bus.headers import Trace, new_id
from bus.keys import KeyRecord, Scope
from bus.secrets import SecretError
from bus.streams import RUN_OUT
from bus.tenants import TenantSettingsCache
from gateway.access_log import correlation_id
from gateway.audit_trail import AuditTrail
from gateway.auth import KeyWatch, Principal
from gateway.catalog import AgentCatalogCache
from gateway.config import GatewayConfig
from gateway.errors import ApiError
from gateway.ratelimit import RateLimits
from gateway.streams import StreamSlots
from gateway.ws_tokens import WsTokens
from schemas._base import Message
from schemas.approvals import RunWaiting
from schemas.conversation import TurnCompleted, TurnFailed
from schemas.errors import ErrorCode
from schemas.health import HealthCheck, HealthReport
from schemas.runs import TERMINAL_OUTPUTS, RunOutput

__all__ = ["Gateway", "Stored", "gateway_of", "ident", "stored_response"]

T = TypeVar("T")
ID_NAMESPACE = uuid.UUID("6f1c1f1e-5b8a-4f57-9a39-0c7c2b0e8a11")


def ident(value: str) -> str:
    """An id from a URL; one that cannot exist (not a subject token) is simply not found."""
    try:
        return subjects.token(value)
    except subjects.InvalidToken:
        raise ApiError(ErrorCode.NOT_FOUND, f"no such id: {value[:80]!r}") from None


class Stored(msgspec.Struct, frozen=True):
    """A POST's first answer, kept under its Idempotency-Key, sealed (it may hold a secret shown once:
    a new task's webhook and signing secrets, a research job's signing secret)."""

    status: int
    body: bytes = b""
    stream_run_id: str | None = None  # a streamed answer is replayed from the run's output
    headers: dict[str, str] = {}  # e.g. a 503's Retry-After


def stored_response(stored: Stored, *, replayed: bool = False) -> Response[Any]:
    """A kept answer as it was first given (`replayed`: saying so in Idempotent-Replayed)."""
    headers = {**stored.headers, "Idempotent-Replayed": "true"} if replayed else stored.headers or None
    return Response(stored.body, status_code=stored.status, media_type="application/json", headers=headers)


class TurnWaiter:
    """One subscription to every conversation's turn events, and one to every run that parks; requests wait
    on their run id for the turn's end, or for its run parking first (a turn waiting for a person)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._waiting: dict[str, asyncio.Future[TurnCompleted | TurnFailed | RunWaiting]] = {}
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        self._subs = [
            await self.bus.nc.subscribe(subjects.conversation_turns_all(), cb=self._on_event),
            await self.bus.nc.subscribe(subjects.executor_waiting_all(), cb=self._on_event),
        ]

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    @contextlib.contextmanager
    def expect(self, run_id: str) -> Any:
        future: asyncio.Future[TurnCompleted | TurnFailed | RunWaiting] = asyncio.get_running_loop().create_future()
        self._waiting[run_id] = future
        try:
            yield future
        finally:
            self._waiting.pop(run_id, None)

    async def _on_event(self, msg: Msg) -> None:
        try:
            event = decode_union(msg.data, TurnCompleted | TurnFailed | RunWaiting)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        future = self._waiting.get(event.run_id)
        if future is not None and not future.done():
            future.set_result(event)


class Gateway:
    def __init__(self, config: GatewayConfig, bus: Bus, kv: KeyValue) -> None:
        self.config = config
        self.bus = bus
        self.keys = KeyWatch(bus)
        self.ws_tokens = WsTokens(bus, self.keys, config.ws_token_ttl_s)
        self.audit = AuditTrail(bus)
        self.dev_principal = Principal(  # AGENTBUS_AUTH=off: every request acts for this one
            tenant=config.auth_tenant,
            key_id="dev",
            digest="",
            record=KeyRecord(tenant=config.auth_tenant, name="dev", created_at=0.0, scopes=(Scope.ADMIN,)),
        )
        self.turns = TurnWaiter(bus)
        self.agents = AgentCatalogCache(bus)
        self.tenants = TenantSettingsCache(bus)  # started with the app (gateway/app.py)
        self.rate_limits = RateLimits(bus, config, self.tenants)
        self.streams = StreamSlots(self.tenants)
        self._kv = kv

    async def ask(self, actor: subjects.ActorName, verb: str, message: Message, reply: type[T], trace: Trace) -> T:
        """Request/reply to `actor`; an internal failure while the actor reports itself unhealthy (its
        PostgreSQL is down, say) is `unavailable` (503, Retry-After), not a 500."""
        try:
            return await self.bus.request(subjects.service(actor, verb), message, reply, trace=trace)
        except BusError as e:
            if e.code is ErrorCode.INTERNAL and not await self._healthy(actor, trace):
                raise BusError(ErrorCode.UNAVAILABLE, f"the {actor.value} actor is unhealthy: try again later") from e
            raise

    async def _healthy(self, actor: subjects.ActorName, trace: Trace) -> bool:
        try:
            report = await self.bus.request(
                subjects.service(actor, "health"), HealthCheck(), HealthReport, trace=trace, timeout=2.0
            )
        except BusError:
            return False
        return report.ok

    # --- idempotency -------------------------------------------------------------------------

    @staticmethod
    def idempotency_digest(request: Request[Any, Any, Any], tenant: str) -> str | None:
        key = request.headers.get("idempotency-key")
        if key is None:
            return None
        if not 1 <= len(key) <= 255:
            raise ApiError(ErrorCode.INVALID, "Idempotency-Key must be 1 to 255 characters")
        return hashlib.sha256(f"{tenant}\n{request.method}\n{request.url.path}\n{key}".encode()).hexdigest()

    @staticmethod
    def make_id(digest: str | None, name: str) -> str:
        """A new id, or with an Idempotency-Key the same id every time the request is retried."""
        return new_id() if digest is None else str(uuid.uuid5(ID_NAMESPACE, f"{digest}:{name}"))

    async def recall(self, digest: str | None) -> Stored | None:
        if digest is None:
            return None
        try:
            entry = await self._kv.get(digest)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        try:
            value = self.config.secrets.open_bytes(entry.value)
        except SecretError:
            value = entry.value  # kept before answers were sealed (or under a key since dropped)
        try:
            return msgspec.msgpack.decode(value, type=Stored)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None  # unreadable: answered anew, as if it had expired

    async def remember(self, digest: str | None, stored: Stored) -> None:
        if digest is not None:
            await self._kv.put(digest, self.config.secrets.seal_bytes(msgspec.msgpack.encode(stored)))

    # --- runs --------------------------------------------------------------------------------

    async def run_output(self, tenant: str, run_id: str, after_seq: int = 0) -> AsyncIterator[Envelope[Any]]:
        """The run's output from after `after_seq` through its terminal event."""
        subject = subjects.run_output(tenant, run_id)
        async for envelope in self.bus.replay(
            RUN_OUT.name, subject, RunOutput, after_seq=after_seq, until=lambda b: isinstance(b, TERMINAL_OUTPUTS)
        ):
            yield envelope

    @staticmethod
    def trace(tenant: str, request: Request[Any, Any, Any] | None = None) -> Trace:
        """A new trace for this request, continuing the caller's W3C traceparent when it sent one; its
        correlation id is the one the response's X-Correlation-Id names (gateway/access_log.py)."""
        correlation = correlation_id(request) if request is not None else new_id()
        if (current := tracing.traceparent()) is not None:  # the request's span (gateway/access_log.py)
            return Trace(tenant=tenant, correlation_id=correlation, traceparent=current)
        parent = request.headers.get("traceparent") if request is not None else None
        if parent and len(parent.split("-")) == 4:
            return Trace(tenant=tenant, correlation_id=correlation, traceparent=parent).child()
        return Trace(tenant=tenant, correlation_id=correlation)


def gateway_of(state: State) -> Gateway:
    gateway: Gateway = state.gateway
    return gateway
