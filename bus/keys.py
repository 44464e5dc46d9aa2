"""API keys: made by `agentbus keys create`, resolved by the gateway. Kept in JetStream KV, hashed.

A key is `ab_<random>`; the bucket stores only its SHA-256 (so a copy of the bucket grants nothing)
mapped to the tenant and a name for humans. Lookups are one KV get; the gateway caches them briefly.
"""

from __future__ import annotations

import hashlib
import secrets
import time

import msgspec
from nats.js.errors import KeyNotFoundError

from bus.client import Bus

__all__ = ["BUCKET", "KeyRecord", "create_key", "lookup", "revoke"]

BUCKET = "ab_api_keys"
PREFIX = "ab_"


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    name: str
    created_at: float


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def create_key(bus: Bus, *, tenant: str, name: str = "") -> str:
    """A new key for `tenant`; the only time the key itself is seen."""
    key = PREFIX + secrets.token_urlsafe(32)
    kv = await bus.key_value(BUCKET)
    record = KeyRecord(tenant=tenant, name=name or tenant, created_at=time.time())
    await kv.put(_digest(key), msgspec.json.encode(record))
    return key


async def lookup(bus: Bus, key: str) -> KeyRecord | None:
    """The key's record, or None for a key that was never made (or was revoked)."""
    if not key.startswith(PREFIX):
        return None
    kv = await bus.key_value(BUCKET)
    try:
        entry = await kv.get(_digest(key))
    except KeyNotFoundError:
        return None
    if entry.value is None:
        return None
    return msgspec.json.decode(entry.value, type=KeyRecord)


async def revoke(bus: Bus, key: str) -> bool:
    kv = await bus.key_value(BUCKET)
    digest = _digest(key)
    try:
        await kv.get(digest)
    except KeyNotFoundError:
        return False
    await kv.delete(digest)
    return True
