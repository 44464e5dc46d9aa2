"""API keys: made by `agentbus keys create`, resolved by the gateway. Kept in JetStream KV, hashed.

A key is `ab_<random>`; the bucket stores only its SHA-256 (so a copy of the bucket grants nothing)
mapped to the tenant and a name for humans. Lookups are one KV get; the gateway caches them briefly.
The get is direct, so any replica answers it (a stream leader election does not stop lookups); a key
a replica does not know yet is asked of the stream leader before it is called unknown.
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
    digest = _digest(key)
    for leader in (False, True):  # a replica may not have the newest keys yet: then the stream leader
        kv = await bus.key_value(BUCKET, leader=leader)
        try:
            entry = await kv.get(digest)
        except KeyNotFoundError:
            continue
        if entry.value is not None:
            return msgspec.json.decode(entry.value, type=KeyRecord)
    return None


async def revoke(bus: Bus, key: str) -> bool:
    kv = await bus.key_value(BUCKET, leader=True)
    digest = _digest(key)
    try:
        await kv.get(digest)
    except KeyNotFoundError:
        return False
    await kv.delete(digest)
    return True
