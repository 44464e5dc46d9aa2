"""API keys: made by `agentbus keys create` (or `POST /v1/keys`), resolved by the gateway. Kept in JetStream
KV (`ab_api_keys`), hashed.

A key is `ab_<random>`; the bucket stores only its SHA-256 (so a copy of the bucket grants nothing), keyed
by that digest, mapped to a record: the tenant, a name for humans, its scopes and an optional expiry. The
key's public id (`key_<12 hex>`, in lists and the audit log) is the start of the digest, so a record made
before ids existed has one too, and no second index has to be kept in step. Revoking deletes the record:
the gateway's watch on the bucket sees the delete at once (gateway/auth.py).

Scopes are a ladder: `admin` implies `write` implies `read`. A record from before scopes (tenant, name,
created_at only) loads as `admin`: such a key could do everything its tenant can, and turning it into a
lesser key on upgrade would break its holder's use of the API without anyone having decided so.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
import time
from collections.abc import Iterable

import msgspec
from nats.js.errors import KeyNotFoundError

from bus.client import Bus

__all__ = [
    "BUCKET",
    "ID_PREFIX",
    "PREFIX",
    "KeyRecord",
    "Scope",
    "StoredKey",
    "create",
    "create_key",
    "decode",
    "digest",
    "find",
    "get",
    "key_id",
    "list_keys",
    "lookup",
    "revoke",
    "revoke_id",
    "rotate",
    "set_expiry",
]

BUCKET = "ab_api_keys"
PREFIX = "ab_"
ID_PREFIX = "key_"
ID_HEX = 12  # 48 bits of a 256-bit digest: unique enough to name a key, useless to guess one


class Scope(enum.StrEnum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


_RANK = {Scope.READ: 1, Scope.WRITE: 2, Scope.ADMIN: 3}


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    tenant: str
    name: str
    created_at: float
    scopes: tuple[Scope, ...] = (Scope.ADMIN,)  # a record from before scopes could do everything
    expires_at: float | None = None

    def allows(self, scope: Scope) -> bool:
        """True when one of the key's scopes is `scope` or above it (admin ⊃ write ⊃ read)."""
        return any(_RANK[s] >= _RANK[scope] for s in self.scopes)

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (time.time() if now is None else now)


class StoredKey(msgspec.Struct, frozen=True, kw_only=True):
    """A record with the digest it is stored under (never the key itself)."""

    digest: str
    record: KeyRecord

    @property
    def id(self) -> str:
        return key_id(self.digest)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(key_digest: str) -> str:
    return ID_PREFIX + key_digest[:ID_HEX]


def _narrowest(scopes: Iterable[Scope]) -> tuple[Scope, ...]:
    """The scopes as given, deduplicated in ladder order (at least `read`)."""
    given = sorted(set(scopes), key=_RANK.__getitem__)
    return tuple(given) or (Scope.READ,)


async def create_key(
    bus: Bus,
    *,
    tenant: str,
    name: str = "",
    scopes: Iterable[Scope] = (Scope.ADMIN,),
    expires_at: float | None = None,
) -> str:
    """A new key for `tenant`; the only time the key itself is seen."""
    key, _ = await create(bus, tenant=tenant, name=name, scopes=scopes, expires_at=expires_at)
    return key


async def create(
    bus: Bus,
    *,
    tenant: str,
    name: str = "",
    scopes: Iterable[Scope] = (Scope.ADMIN,),
    expires_at: float | None = None,
) -> tuple[str, StoredKey]:
    """A new key and its stored record."""
    key = PREFIX + secrets.token_urlsafe(32)
    kv = await bus.key_value(BUCKET, leader=True)
    record = KeyRecord(
        tenant=tenant, name=name or tenant, created_at=time.time(), scopes=_narrowest(scopes), expires_at=expires_at
    )
    stored = StoredKey(digest=digest(key), record=record)
    await kv.put(stored.digest, msgspec.json.encode(record))
    return key, stored


def decode(value: bytes) -> KeyRecord:
    return msgspec.json.decode(value, type=KeyRecord)


async def lookup(bus: Bus, key: str) -> KeyRecord | None:
    """The key's record, or None for a key that was never made (or was revoked)."""
    if not key.startswith(PREFIX):
        return None
    return await get(bus, digest(key))


async def get(bus: Bus, key_digest: str) -> KeyRecord | None:
    """The record stored under `key_digest` (None if there is none)."""
    for leader in (False, True):  # a replica may not have the newest keys yet: then the stream leader
        kv = await bus.key_value(BUCKET, leader=leader)
        try:
            entry = await kv.get(key_digest)
        except KeyNotFoundError:
            continue
        if entry.value:
            return decode(entry.value)
    return None


async def list_keys(bus: Bus, tenant: str | None = None) -> list[StoredKey]:
    """Every key (of `tenant`), oldest first: one pass over the bucket (Bus.kv_entries)."""
    found: list[StoredKey] = []
    for key, value in (await bus.kv_entries(BUCKET)).items():
        try:
            record = decode(value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        if tenant is None or record.tenant == tenant:
            found.append(StoredKey(digest=key, record=record))
    return sorted(found, key=lambda s: s.record.created_at)


async def find(bus: Bus, id_: str, *, tenant: str | None = None) -> StoredKey | None:
    """The key with public id `id_` (only if it is `tenant`'s, when one is named)."""
    if not id_.startswith(ID_PREFIX):
        return None
    return next((s for s in await list_keys(bus, tenant) if s.id == id_), None)


async def revoke_id(bus: Bus, id_: str, *, tenant: str | None = None) -> StoredKey | None:
    """Delete the key with id `id_`; its record as it was, or None when there is no such key."""
    stored = await find(bus, id_, tenant=tenant)
    if stored is None:
        return None
    kv = await bus.key_value(BUCKET, leader=True)
    await kv.delete(stored.digest)
    return stored


async def revoke(bus: Bus, key: str) -> bool:
    """Delete the key itself (given the secret)."""
    kv = await bus.key_value(BUCKET, leader=True)
    key_digest = digest(key)
    try:
        await kv.get(key_digest)
    except KeyNotFoundError:
        return False
    await kv.delete(key_digest)
    return True


async def set_expiry(bus: Bus, stored: StoredKey, expires_at: float) -> StoredKey:
    kv = await bus.key_value(BUCKET, leader=True)
    record = msgspec.structs.replace(stored.record, expires_at=expires_at)
    await kv.put(stored.digest, msgspec.json.encode(record))
    return StoredKey(digest=stored.digest, record=record)


async def rotate(bus: Bus, stored: StoredKey, *, grace_s: float = 0.0) -> tuple[str, StoredKey]:
    """A new key with the old one's tenant, name, scopes and expiry; the old one is revoked now, or
    after `grace_s` seconds (it gets that expiry), so its users can switch over."""
    old = stored.record
    key, new = await create(bus, tenant=old.tenant, name=old.name, scopes=old.scopes, expires_at=old.expires_at)
    if grace_s > 0:
        until = time.time() + grace_s
        await set_expiry(bus, stored, until if old.expires_at is None else min(old.expires_at, until))
    else:
        kv = await bus.key_value(BUCKET, leader=True)
        await kv.delete(stored.digest)
    return key, new
