"""Standard Webhooks: `webhook-signature` is HMAC-SHA256 over `id.timestamp.body`, base64, as `v1,<sig>`.

The key is the base64-decoded part of a `whsec_` secret. Several space-separated signatures may
be sent (the sender rotating its key); one valid `v1` signature is enough. Signatures compare in
constant time, as bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from actors._notifications import new_signing_secret as new_secret

__all__ = ["new_secret", "sign", "verify"]


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def _digest(secret: str, msg_id: str, timestamp: str, body: bytes) -> bytes:
    return hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()


def sign(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    return "v1," + base64.b64encode(_digest(secret, msg_id, timestamp, body)).decode()


def verify(secret: str, msg_id: str, timestamp: str, body: bytes, header: str) -> bool:
    """True if any `v1,<base64>` entry of `header` is the signature of this message under `secret`."""
    expected = _digest(secret, msg_id, timestamp, body)
    valid = False
    for entry in header.split():
        version, comma, value = entry.partition(",")
        if version != "v1" or not comma:
            continue  # another scheme (v1a: asymmetric) or junk
        try:
            given = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
        valid |= hmac.compare_digest(expected, given)
    return valid
