"""The nats-server agentbus runs itself (`agentbus run`, and `agentbus nats-server` in compose.yaml):
authenticated by nkeys, one user per process role, plus the tenants' own NATS users, followed live.

The role seeds live in a credentials directory (bus/credentials.py). Once the server is up, an admin
connection follows the `ab_nats_users` bucket (bus/nats_users.py) and reloads the server's
authorization whenever a tenant user is created or revoked.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from bus.client import Bus
from bus.config import BusConfig
from bus.credentials import Role, ensure_seeds, seed_path
from bus.embedded import EmbeddedNats
from bus.nats_users import NatsUser, NatsUserSync
from bus.permissions import server_authorization

__all__ = ["AuthenticatedNats"]

log = structlog.get_logger("bus")


class AuthenticatedNats:
    def __init__(self, data_dir: Path, credentials_dir: Path, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.credentials_dir = credentials_dir
        self.roles = ensure_seeds(credentials_dir)
        self.server = EmbeddedNats(data_dir, host=host, port=port, authorization=server_authorization(self.roles))
        self._bus: Bus | None = None
        self._sync: NatsUserSync | None = None

    def start(self, *, preferred_port: int | None = None) -> EmbeddedNats:
        return self.server.start(preferred_port=preferred_port)

    def bus_config(self, name: str = "agentbus-nats") -> BusConfig:
        """How the admin role reaches this server."""
        return BusConfig(servers=(self.server.url,), name=name, nkey_seed_file=str(self.admin_seed))

    @property
    def admin_seed(self) -> Path:
        return seed_path(self.credentials_dir, Role.ADMIN)

    async def follow_tenant_users(self) -> None:
        """Declare the streams (as admin), then keep the tenants' NATS users in the server's config."""
        self._bus = await Bus.connect(self.bus_config())
        self._sync = NatsUserSync(self._bus, self._apply)
        await self._sync.start()

    async def _apply(self, users: list[NatsUser]) -> None:
        text = server_authorization(self.roles, users)
        await asyncio.to_thread(self.server.reauthorize, text)
        log.info("nats users reloaded", tenant_users=len(users))

    async def stop_following(self) -> None:
        if self._sync is not None:
            await self._sync.stop()
            self._sync = None
        if self._bus is not None:
            await self._bus.close()
            self._bus = None

    def stop(self) -> None:
        self.server.stop()
