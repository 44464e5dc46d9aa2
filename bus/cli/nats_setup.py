"""The `agentbus` commands about NATS itself: `credentials`, `nats-server`, and tenants' NATS users."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from bus import nats_users, subjects
from bus.client import Bus
from bus.credentials import ensure_seeds
from bus.nats_server import AuthenticatedNats
from bus.permissions import TENANT_COMMAND_ACTORS, server_authorization

__all__ = ["make_credentials", "serve_nats", "tenant_user_text"]


def make_credentials(directory: Path) -> str:
    """Make the nkey seed of every role in `directory` (keeping those that exist), and the nats-server
    authorization block for them (`authorization.conf`, to `include` in your own server's config)."""
    roles = ensure_seeds(directory)
    (directory / "authorization.conf").write_text(server_authorization(roles))
    lines = [f"{directory}/{role.value}.nk  {public}" for role, public in roles.items()]
    include = f"for your own nats-server: include {directory / 'authorization.conf'}"
    return "\n".join(["NATS credentials (seed file, public key):", *lines, include])


async def serve_nats(data_dir: Path, credentials_dir: Path, host: str, port: int) -> None:
    """nats-server with agentbus's users, until SIGTERM or SIGINT (what compose.yaml's `nats` runs)."""
    nats = AuthenticatedNats(data_dir, credentials_dir, host=host, port=port)
    await asyncio.to_thread(nats.start)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await nats.follow_tenant_users()
        print(f"nats-server on {host}:{port}, monitoring on 127.0.0.1:{nats.server.monitor_port}", flush=True)
        await stopping.wait()
    finally:
        await nats.stop_following()
        await asyncio.to_thread(nats.stop)


async def tenant_user_text(bus: Bus, tenant: str, name: str) -> str:
    """Create a tenant's NATS user; the seed (shown once) and how to use it."""
    user, seed = await nats_users.create_user(bus, tenant=tenant, name=name)
    commands = ", ".join(subjects.tenant_commands(actor, tenant) for actor in TENANT_COMMAND_ACTORS)
    return "\n".join(
        [
            f"NATS user {user.public_key} for tenant {tenant!r}",
            f"seed (shown once, keep it secret): {seed}",
            f"connect with the seed (nkeys_seed_str) and inbox_prefix={subjects.tenant_inbox_prefix(tenant)!r}",
            f"publish (JetStream, header Ab-Tenant: {tenant}): {commands}",
            f"read: {subjects.tenant_run_outputs(tenant)} and {subjects.tenant_events(tenant)}",
        ]
    )
