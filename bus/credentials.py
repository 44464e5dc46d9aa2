"""NATS credentials: one nkey per process role, kept as seed files under `<home>/nats/` (mode 600).

Why nkeys rather than user/password: nats-server's config holds only public keys, so a leaked config
(or a compose file) grants nothing, and a connecting client proves it holds the seed by signing the
server's nonce, so the secret never crosses the wire, not even to the server.
"""

from __future__ import annotations

import enum
import os
from pathlib import Path

import nkeys

from bus.subjects import ActorName

__all__ = ["Role", "ensure_seeds", "is_nats_user", "new_seed", "public_key", "read_seed", "seed_path"]


class Role(enum.StrEnum):
    """A process's identity on the bus: each actor, the gateway, and `admin` (agentbus run and the CLI)."""

    CONVERSATION = ActorName.CONVERSATION.value
    EXECUTOR = ActorName.EXECUTOR.value
    SCHEDULER = ActorName.SCHEDULER.value
    TRIGGER = ActorName.TRIGGER.value
    RESEARCH = ActorName.RESEARCH.value
    NOTIFIER = ActorName.NOTIFIER.value
    GATEWAY = ActorName.GATEWAY.value
    ADMIN = "admin"


def new_seed() -> bytes:
    """A fresh NATS user nkey seed (`SU...`)."""
    seed: bytes = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    return seed


def public_key(seed: bytes) -> str:
    """The public key (`U...`) nats-server's config names for a seed."""
    return bytes(nkeys.from_seed(bytearray(seed)).public_key).decode()


def is_nats_user(text: str) -> bool:
    """Whether `text` is a NATS user's public key (`U` + 55 base32 characters)."""
    return len(text) == 56 and text.startswith("U") and text.isalnum() and text.isupper()


def seed_path(directory: Path, role: Role) -> Path:
    return directory / f"{role.value}.nk"


def read_seed(path: Path) -> bytes:
    return path.read_bytes().strip()


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data + b"\n")


def ensure_seeds(directory: Path) -> dict[Role, str]:
    """A seed file per role in `directory` (made the first time, kept after); role -> public key."""
    if not directory.exists():
        directory.mkdir(parents=True)
        directory.chmod(0o700)
    keys: dict[Role, str] = {}
    for role in Role:
        path = seed_path(directory, role)
        if not path.exists():
            _write_private(path, new_seed())
        keys[role] = public_key(read_seed(path))
    return keys
