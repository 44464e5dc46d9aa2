"""Single-use tokens for browsers' WebSockets (which cannot send an Authorization header).

`POST /v1/ws-tokens` with a real key gives a token good for one WebSocket connection within
`ws_token_ttl_s` (60 s). Kept in KV (`ab_ws_tokens`, a TTL bucket) under its SHA-256, naming the key it
was made with; redeeming deletes the entry with the revision read (optimistic concurrency), so of two
connections presenting the same token, on any replicas, exactly one gets in. The key must still be
valid when the token is used: a revoked key's tokens die with it.
"""

from __future__ import annotations

import hashlib
import secrets
import time

import msgspec
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError

from bus.client import Bus
from bus.keys import key_id
from bus.streams import WS_TOKENS_BUCKET
from gateway.auth import KeyWatch, Principal
from gateway.errors import ApiError
from schemas.errors import ErrorCode

__all__ = ["BUCKET", "WsToken", "WsTokens"]

BUCKET = WS_TOKENS_BUCKET
PREFIX = "wst_"


class _Grant(msgspec.Struct, frozen=True, kw_only=True):
    digest: str  # the key's
    made_at: float


class WsToken(msgspec.Struct, frozen=True, kw_only=True):
    token: str
    expires_in_s: int


class WsTokens:
    def __init__(self, bus: Bus, keys: KeyWatch, ttl_s: float) -> None:
        self.bus = bus
        self.keys = keys
        self.ttl_s = ttl_s

    async def issue(self, principal: Principal) -> WsToken:
        if not principal.digest:
            raise ApiError(ErrorCode.INVALID, "authentication is off: a WebSocket needs no token")
        token = PREFIX + secrets.token_urlsafe(24)
        kv = await self.bus.key_value(BUCKET, ttl_s=self.ttl_s, leader=True)
        await kv.put(_digest(token), msgspec.json.encode(_Grant(digest=principal.digest, made_at=time.time())))
        return WsToken(token=token, expires_in_s=int(self.ttl_s))

    async def redeem(self, token: str) -> Principal:
        refused = ApiError(ErrorCode.UNAUTHORIZED, "unknown, used or expired WebSocket token")
        if not token.startswith(PREFIX):
            raise refused
        kv = await self.bus.key_value(BUCKET, ttl_s=self.ttl_s, leader=True)
        name = _digest(token)
        try:
            entry = await kv.get(name)
            await kv.delete(name, last=entry.revision)
        except (KeyNotFoundError, KeyWrongLastSequenceError):
            raise refused from None
        except APIError as e:  # the revision moved: another connection used it first
            if e.err_code == 10071:
                raise refused from None
            raise
        grant = msgspec.json.decode(entry.value or b"{}", type=_Grant)
        record = self.keys.current(grant.digest)
        if grant.made_at + self.ttl_s < time.time() or record is None or record.expired():
            raise refused
        return Principal(tenant=record.tenant, key_id=key_id(grant.digest), digest=grant.digest, record=record)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
