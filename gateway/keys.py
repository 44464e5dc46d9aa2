"""/v1/keys: a tenant's API keys, managed with an `admin` key (only its own tenant's), and /v1/ws-tokens."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.params import FromPath, JSONBody, QueryParameter

from bus import keys
from bus.keys import Scope, StoredKey
from gateway.auth import principal_of
from gateway.errors import ApiError
from gateway.state import gateway_of
from gateway.ws_tokens import WsToken
from schemas.errors import ErrorCode

__all__ = ["KeyController", "create_ws_token"]

ADMIN = {"scope": Scope.ADMIN.value}
MAX_GRACE_S = 7 * 24 * 3600
ExpiresIn = Annotated[int, msgspec.Meta(ge=60, le=10 * 366 * 24 * 3600, description="seconds from now")]


class NewKey(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(max_length=200)] = ""
    scopes: Annotated[tuple[Scope, ...], msgspec.Meta(min_length=1)] = (Scope.WRITE,)
    expires_in_s: ExpiresIn | None = None  # none: the key does not expire


class KeyView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    tenant: str
    name: str
    scopes: list[Scope]  # admin implies write implies read
    created_at: datetime
    expires_at: datetime | None = None


class NewKeyAnswer(KeyView, frozen=True, kw_only=True):
    key: str  # the secret, shown this once


class KeyList(msgspec.Struct, frozen=True, kw_only=True):
    keys: list[KeyView]


def _when(at: float | None) -> datetime | None:
    return None if at is None else datetime.fromtimestamp(at, UTC)


def view(stored: StoredKey) -> KeyView:
    r = stored.record
    return KeyView(
        id=stored.id,
        tenant=r.tenant,
        name=r.name,
        scopes=list(r.scopes),
        created_at=datetime.fromtimestamp(r.created_at, UTC),
        expires_at=_when(r.expires_at),
    )


def _answer(key: str, stored: StoredKey) -> NewKeyAnswer:
    return NewKeyAnswer(**msgspec.structs.asdict(view(stored)), key=key)


class KeyController(Controller):
    path = "/v1/keys"
    tags = ["keys"]
    opt = ADMIN

    @get(summary="The tenant's API keys (ids, names, scopes, expiry; never the secrets)")
    async def list_keys(self, request: Request[Any, Any, Any]) -> KeyList:
        principal = principal_of(request)
        found = await keys.list_keys(gateway_of(request.app.state).bus, principal.tenant)
        return KeyList(keys=[view(s) for s in found])

    @post(summary="A new API key for the tenant; the secret is in this answer only")
    async def create(self, request: Request[Any, Any, Any], data: JSONBody[NewKey]) -> NewKeyAnswer:
        principal = principal_of(request)
        expires_at = None if data.expires_in_s is None else time.time() + data.expires_in_s
        key, stored = await keys.create(
            gateway_of(request.app.state).bus,
            tenant=principal.tenant,
            name=data.name,
            scopes=data.scopes,
            expires_at=expires_at,
        )
        return _answer(key, stored)

    @delete("/{key_id:str}", summary="Revoke a key: every gateway refuses it within a second, its streams close")
    async def revoke(self, request: Request[Any, Any, Any], key_id: FromPath[str]) -> None:
        principal = principal_of(request)
        if await keys.revoke_id(gateway_of(request.app.state).bus, key_id, tenant=principal.tenant) is None:
            raise ApiError(ErrorCode.NOT_FOUND, f"no key {key_id[:80]!r}")

    @post(
        "/{key_id:str}/rotate",
        summary="A new secret for the key's tenant, name and scopes (a new id); the old key is revoked now, "
        "or expires after `grace_s` seconds",
    )
    async def rotate(
        self,
        request: Request[Any, Any, Any],
        key_id: FromPath[str],
        grace_s: Annotated[int, QueryParameter(ge=0, le=MAX_GRACE_S)] = 0,
    ) -> NewKeyAnswer:
        principal = principal_of(request)
        bus = gateway_of(request.app.state).bus
        stored = await keys.find(bus, key_id, tenant=principal.tenant)
        if stored is None:
            raise ApiError(ErrorCode.NOT_FOUND, f"no key {key_id[:80]!r}")
        key, new = await keys.rotate(bus, stored, grace_s=grace_s)
        return _answer(key, new)


@post("/v1/ws-tokens", summary="A single-use token for one browser WebSocket (`?token=`), valid for 60 s")
async def create_ws_token(request: Request[Any, Any, Any]) -> WsToken:
    return await gateway_of(request.app.state).ws_tokens.issue(principal_of(request))
