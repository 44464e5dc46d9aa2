"""Standard Webhooks: `webhook-signature` is HMAC-SHA256 over `id.timestamp.body`, base64, as `v1,<sig>`.

Several space-separated signatures may be sent (key rotation); one valid signature is enough.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = ["new_secret", "sign", "verify"]


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, msg_id: str, timestamp: str, body: bytes, header: str) -> bool:
    expected = sign(secret, msg_id, timestamp, body).split(",", 1)[1]
    given = [s.split(",", 1)[1] for s in header.split() if s.startswith("v1,") and "," in s]
    return any(hmac.compare_digest(expected, g) for g in given)
