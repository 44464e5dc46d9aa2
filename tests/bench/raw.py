"""A plain nats-py connection for the baselines (light to import: the floor processes start fast)."""

from __future__ import annotations

import os
from pathlib import Path

import nats
from nats.aio.client import Client as NatsClient

from bus.credentials import Role, read_seed, seed_path

__all__ = ["raw_connect"]


async def raw_connect(url: str, credentials: Path | str | None = None) -> NatsClient:
    """A plain nats-py connection for the baselines, signed in as admin (`credentials` or the
    `AGENTBUS_NATS_CREDENTIALS` a child process was given), so a baseline pays no permissions."""
    directory = credentials or os.environ.get("AGENTBUS_NATS_CREDENTIALS")
    seed = read_seed(seed_path(Path(directory), Role.ADMIN)).decode() if directory else None
    return await nats.connect(url, nkeys_seed_str=seed)
