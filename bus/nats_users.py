"""Tenants' own NATS users (`agentbus keys create --tenant T --nats`), kept in JetStream KV.

The bucket `ab_nats_users` maps a user's public nkey to its tenant; the seed is shown once and never
stored. Whoever runs nats-server (`agentbus run`, or `agentbus nats-server` in compose.yaml) follows the
bucket with `NatsUserSync` and reloads the server's authorization when it changes, so a new user can
connect, and a revoked one is disconnected, within moments of the change.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
import structlog
from nats.js.errors import KeyNotFoundError

from bus import subjects
from bus.client import Bus, KvChange
from bus.credentials import new_seed, public_key

__all__ = ["BUCKET", "NatsUser", "NatsUserSync", "create_user", "list_users", "revoke_user"]

BUCKET = "ab_nats_users"
log = structlog.get_logger("bus")


class NatsUser(msgspec.Struct, frozen=True, kw_only=True):
    public_key: str
    tenant: str
    name: str = ""
    created_at: float = 0.0
    revoked: bool = False


async def create_user(bus: Bus, *, tenant: str, name: str = "") -> tuple[NatsUser, str]:
    """A new NATS user for `tenant`: its record and its seed (the only time the seed is seen)."""
    subjects.token(tenant)
    seed = new_seed()
    user = NatsUser(public_key=public_key(seed), tenant=tenant, name=name or tenant, created_at=time.time())
    kv = await bus.key_value(BUCKET, leader=True)
    await kv.put(user.public_key, msgspec.json.encode(user))
    return user, seed.decode()


async def list_users(bus: Bus, *, tenant: str | None = None) -> list[NatsUser]:
    users = [msgspec.json.decode(value, type=NatsUser) for value in (await bus.kv_entries(BUCKET)).values()]
    return [u for u in users if tenant is None or u.tenant == tenant]


async def revoke_user(bus: Bus, public_key: str) -> bool:
    kv = await bus.key_value(BUCKET, leader=True)
    try:
        await kv.get(public_key)
    except KeyNotFoundError:
        return False
    await kv.delete(public_key)
    return True


class NatsUserSync:
    """Follows the bucket with a KV watch and calls `apply(users)` after each change (and once at start)."""

    def __init__(self, bus: Bus, apply: Callable[[list[NatsUser]], Awaitable[None]]) -> None:
        self.bus = bus
        self.apply = apply
        self._users: dict[str, NatsUser] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._follow(self.bus.kv_watch(BUCKET)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout=10.0)

    async def _follow(self, changes: AsyncIterator[KvChange | None]) -> None:
        async for change in changes:
            if change is None:  # every current user delivered: apply them at once
                await self._apply()
                self._ready.set()
                continue
            if change.value is None:
                self._users.pop(change.key, None)
            else:
                try:
                    self._users[change.key] = msgspec.json.decode(change.value, type=NatsUser)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    log.warning("unreadable NATS user record ignored", key=change.key)
                    continue
            if self._ready.is_set():
                await self._apply()

    async def _apply(self) -> None:
        try:
            await self.apply(sorted(self._users.values(), key=lambda u: u.public_key))
        except Exception:
            log.exception("could not apply the tenants' NATS users")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
