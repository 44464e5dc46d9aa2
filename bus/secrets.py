"""Secrets at rest: webhook and signing secrets (and replayed answers holding them) sealed with a key
from the environment, by `cryptography`'s Fernet (AES-128-CBC + HMAC-SHA256, with a timestamp).

`AGENTBUS_SECRET_KEY` is the key new values are sealed with (a Fernet key: 32 url-safe base64
bytes, `python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`).
`AGENTBUS_SECRET_KEYS` lists older keys, comma-separated, still accepted for opening: to rotate,
make the new key `AGENTBUS_SECRET_KEY`, move the old one to `AGENTBUS_SECRET_KEYS`, restart; each
owning actor re-seals its rows under the new key at start (`reseal`), after which the old key can go.

A sealed value is text: `fernet:` + the token. A stored value without that prefix is a plaintext
secret from before sealing: it is still read as it is, and re-sealed at the owner's next start.
`make run` keeps a generated key in `.agentbus/secret.key` (`ensure_secret_key`); a process
without a key refuses to start.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

__all__ = ["PREFIX", "SecretBox", "SecretError", "ensure_secret_key"]

PREFIX = "fernet:"
KEY_FILE = "secret.key"


class SecretError(RuntimeError):
    """No usable key, or a sealed value no configured key opens."""


@dataclass(frozen=True, slots=True)
class SecretBox:
    """Seals and opens secrets with the current key; opens with older keys too."""

    keys: tuple[str, ...]  # the current key first

    def __post_init__(self) -> None:
        if not self.keys:
            raise SecretError("no secret key: set AGENTBUS_SECRET_KEY (make run generates .agentbus/secret.key)")
        try:
            for key in self.keys:
                Fernet(key)
        except ValueError:
            raise SecretError("AGENTBUS_SECRET_KEY(S) must be Fernet keys: 32 url-safe base64-encoded bytes") from None

    @classmethod
    def from_env(cls, env: MutableMapping[str, str] | None = None) -> SecretBox:
        e = os.environ if env is None else env
        current = e.get("AGENTBUS_SECRET_KEY", "").strip()
        older = [k.strip() for k in e.get("AGENTBUS_SECRET_KEYS", "").split(",") if k.strip()]
        return cls(tuple(k for k in (current, *older) if k))

    @property
    def _all(self) -> MultiFernet:
        return MultiFernet([Fernet(k) for k in self.keys])

    def seal_bytes(self, plain: bytes) -> bytes:
        return Fernet(self.keys[0]).encrypt(plain)

    def open_bytes(self, token: bytes) -> bytes:
        try:
            return self._all.decrypt(token)
        except InvalidToken:
            raise SecretError("a sealed value opens with none of the configured keys") from None

    def seal(self, plain: str) -> str:
        return PREFIX + self.seal_bytes(plain.encode()).decode()

    def open(self, stored: str) -> str:
        """The secret of a stored value: sealed, or plaintext from before sealing."""
        if not stored.startswith(PREFIX):
            return stored
        return self.open_bytes(stored.removeprefix(PREFIX).encode()).decode()

    def reseal(self, stored: str) -> str | None:
        """The value to store instead (plaintext sealed, or sealed under an older key sealed anew);
        None if it is sealed under the current key already."""
        if not stored.startswith(PREFIX):
            return self.seal(stored)
        token = stored.removeprefix(PREFIX).encode()
        try:
            Fernet(self.keys[0]).decrypt(token)
            return None
        except InvalidToken:
            return self.seal(self.open_bytes(token).decode())


def ensure_secret_key(home: Path, env: MutableMapping[str, str] | None = None) -> str:
    """AGENTBUS_SECRET_KEY for a local platform: the environment's, else the one kept in
    `<home>/secret.key` (made, readable by its owner only, the first time); set in `env` for children."""
    e = os.environ if env is None else env
    if e.get("AGENTBUS_SECRET_KEY"):
        return e["AGENTBUS_SECRET_KEY"]
    path = home / KEY_FILE
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(Fernet.generate_key().decode() + "\n")
    key = path.read_text().strip()
    e["AGENTBUS_SECRET_KEY"] = key
    return key
