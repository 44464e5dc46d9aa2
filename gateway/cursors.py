"""The `after` cursor of the newest-first lists (conversations, runs, research jobs): opaque to clients.

It is the keyset the page ended at (schemas/pages.py, `Keyset`: a timestamp and an id) as URL-safe
base64 of `[microseconds since the epoch, id]`, so the gateway checks it before anything reaches an
actor, and a store pages on with one indexed comparison.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta
from typing import Annotated

import msgspec
from litestar.params import QueryParameter

from gateway.errors import ApiError
from schemas.errors import ErrorCode
from schemas.pages import Keyset

__all__ = ["After", "Limit", "cursor", "keyset"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_ID = 200
# the query parameters every such list takes
After = Annotated[
    str | None,
    QueryParameter(max_length=400, description="the `next_after` of the previous page (an opaque cursor)"),
]
Limit = Annotated[int, QueryParameter(ge=1, le=200, description="at most this many items (default 50)")]
_decode = msgspec.json.Decoder(tuple[int, str])


def cursor(at: Keyset | None) -> str | None:
    if at is None:
        return None
    micros = (at.at - EPOCH) // timedelta(microseconds=1)
    return base64.urlsafe_b64encode(msgspec.json.encode((micros, at.id))).rstrip(b"=").decode()


def keyset(after: str | None) -> Keyset | None:
    """The keyset an `after` names (none when it is empty: the first page); 422 `invalid` for one no page gave."""
    if not after:
        return None
    try:
        micros, id_ = _decode.decode(base64.urlsafe_b64decode(after + "=" * (-len(after) % 4)))
        at = EPOCH + timedelta(microseconds=micros)
    except (binascii.Error, ValueError, msgspec.DecodeError, OverflowError):
        raise ApiError(ErrorCode.INVALID, "`after` is not a cursor a page of this list gave") from None
    if not 0 < len(id_) <= MAX_ID or "\x00" in id_:
        raise ApiError(ErrorCode.INVALID, "`after` is not a cursor a page of this list gave")
    return Keyset(at=at, id=id_)
