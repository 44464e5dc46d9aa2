"""Who is calling: `Authorization: Bearer <key>` → a `Principal` (tenant, key id, scopes), checked by one
app-wide guard on every `/v1` route, so a route added tomorrow is covered without a line of its own.

Scopes per route: a GET (or HEAD) needs `read`, any other method `write`, a route whose `opt` names a
`scope` needs that one (key management and the audit log: `admin`); a WebSocket needs `write` (it
chats both ways). Missing the scope is 403 `forbidden`.

Keys are known from a KV watch on `ab_api_keys` (`KeyWatch`): every replica holds every record and
hears of a revoke (a delete) within milliseconds, with no TTL to wait out; a key the watch has not
delivered yet (made a moment ago on another replica) is asked of the stream leader. Keys are never
taken from a URL: a browser's WebSocket presents a single-use token instead (gateway/ws_tokens.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import msgspec
import structlog
from litestar import WebSocket
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.exceptions import WebSocketException
from litestar.handlers.base import BaseRouteHandler

from bus import keys
from bus.client import Bus
from bus.keys import KeyRecord, Scope, StoredKey
from gateway.access_log import note_tenant
from gateway.errors import ApiError, close_code, error_json
from schemas.errors import ErrorCode

__all__ = ["PRINCIPAL", "KeyWatch", "Principal", "authorize", "presented_key", "principal_of"]

log = structlog.get_logger("gateway")
PRINCIPAL = "agentbus.principal"  # key of the scope state
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SWEEP_S = 0.5  # how often keys with open streams are checked for having expired


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """The caller a request acts for."""

    tenant: str
    key_id: str
    digest: str  # "" when authentication is off
    record: KeyRecord

    def allows(self, scope: Scope) -> bool:
        return self.record.allows(scope)


Revoked = Callable[[], None]


class KeyWatch:
    """Every API key record, followed by a KV watch; streams opened with a key are told when it goes."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._records: dict[str, KeyRecord] = {}
        self._streams: dict[str, set[Revoked]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._follow()), asyncio.create_task(self._sweep())]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout=10.0)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _follow(self) -> None:
        """Apply every put and delete; if the watch fails, watch again and reconcile."""
        while True:
            try:
                fresh: dict[str, KeyRecord] | None = {}
                async for change in self.bus.kv_watch(keys.BUCKET):
                    if change is None:  # the current values are all delivered
                        if fresh is not None:
                            gone = set(self._records) - set(fresh)
                            self._records = fresh
                            fresh = None
                            for digest in gone:
                                self._revoked(digest)
                        self._ready.set()
                        continue
                    target = self._records if fresh is None else fresh
                    if change.value is None:
                        target.pop(change.key, None)
                        if fresh is None:
                            self._revoked(change.key)
                        continue
                    try:
                        target[change.key] = keys.decode(change.value)
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        log.warning("unreadable API key record ignored", key_id=keys.key_id(change.key))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("API key watch failed: watching again", error=str(e))
            await asyncio.sleep(0.5)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            now = time.time()
            for digest in list(self._streams):
                record = self._records.get(digest)
                if record is not None and record.expired(now):
                    self._revoked(digest)

    def _revoked(self, digest: str) -> None:
        for close in self._streams.pop(digest, set()):
            close()

    def on_revoke(self, digest: str, close: Revoked) -> Callable[[], None]:
        """Call `close` when the key is revoked or expires; returns the function that forgets it."""
        self._streams.setdefault(digest, set()).add(close)

        def forget() -> None:
            registered = self._streams.get(digest)
            if registered is not None:
                registered.discard(close)
                if not registered:
                    del self._streams[digest]

        return forget

    async def resolve(self, key: str) -> StoredKey:
        """The key's record: 401 for an unknown, revoked or expired key."""
        if not key.startswith(keys.PREFIX):
            raise ApiError(ErrorCode.UNAUTHORIZED, "unknown API key")
        digest = keys.digest(key)
        record = self._records.get(digest)
        if record is None:  # made a moment ago on another replica, or never
            record = await keys.get(self.bus, digest)
        if record is None:
            raise ApiError(ErrorCode.UNAUTHORIZED, "unknown API key")
        if record.expired():
            raise ApiError(ErrorCode.UNAUTHORIZED, "the API key has expired")
        return StoredKey(digest=digest, record=record)

    def current(self, digest: str) -> KeyRecord | None:
        """The record as the watch last saw it (None once revoked)."""
        return self._records.get(digest)


def presented_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The bearer key of a request; a key in the query string is refused, never read."""
    header = connection.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() == "bearer" and key.strip():
        return key.strip()
    if "api_key" in connection.query_params:
        raise ApiError(
            ErrorCode.UNAUTHORIZED,
            "API keys are not accepted in the URL: send Authorization: Bearer <key> "
            "(a browser's WebSocket: ?token= from POST /v1/ws-tokens)",
        )
    raise ApiError(ErrorCode.UNAUTHORIZED, "send an API key: Authorization: Bearer <key>")


def required_scope(connection: ASGIConnection[Any, Any, Any, Any], route_handler: BaseRouteHandler) -> Scope:
    said = route_handler.opt.get("scope")
    if said is not None:
        return Scope(said)
    if connection.scope["type"] == ScopeType.WEBSOCKET:
        return Scope.WRITE
    return Scope.READ if connection.scope.get("method") in READ_METHODS else Scope.WRITE


async def _principal(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    from gateway.state import gateway_of  # the gateway's state holds the watch; it imports this module

    gateway = gateway_of(connection.app.state)
    if gateway.config.auth_off:
        return gateway.dev_principal
    if connection.scope["type"] == ScopeType.WEBSOCKET and "token" in connection.query_params:
        return await gateway.ws_tokens.redeem(str(connection.query_params["token"]))
    stored = await gateway.keys.resolve(presented_key(connection))
    return Principal(tenant=stored.record.tenant, key_id=stored.id, digest=stored.digest, record=stored.record)


async def authorize(connection: ASGIConnection[Any, Any, Any, Any], route_handler: BaseRouteHandler) -> None:
    """The app-wide guard: every `/v1` route (but one marked `public`) needs a key with the route's scope."""
    if not connection.scope["path"].startswith("/v1/") or route_handler.opt.get("public"):
        return
    try:
        principal = await _principal(connection)
        scope = required_scope(connection, route_handler)
        if not principal.allows(scope):
            raise ApiError(ErrorCode.FORBIDDEN, f"this API key lacks the `{scope}` scope", {"scope": scope.value})
    except ApiError as e:
        if not isinstance(connection, WebSocket):
            raise
        await connection.accept()  # the browser is told why before the close
        await connection.send_data(error_json(e.code, e.message, e.details).decode(), mode="text")
        raise WebSocketException(detail=e.code.value, code=close_code(e.code)) from e
    connection.scope["state"][PRINCIPAL] = principal
    note_tenant(connection, principal.tenant)


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The principal the guard found (a route the guard skipped has none: a programming error)."""
    principal: Principal | None = connection.scope["state"].get(PRINCIPAL)
    if principal is None:
        raise ApiError(ErrorCode.UNAUTHORIZED, "send an API key: Authorization: Bearer <key>")
    return principal
