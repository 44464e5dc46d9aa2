"""What every request must pass before a handler decodes it: JSON nested at most MAX_DEPTH deep, and no
NUL character in its body or query (PostgreSQL stores no NUL in text or jsonb; a decoder recursing
10,000 levels deep raises RecursionError)."""

from __future__ import annotations

import re
from typing import Any

from gateway.errors import ApiError
from schemas.errors import ErrorCode

__all__ = ["MAX_DEPTH", "json_depth_exceeds", "screen_body", "screen_request"]

MAX_DEPTH = 64
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")  # \u0000 after an even number of backslashes
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """True when `body`, read as JSON, nests arrays and objects more than `limit` deep.

    Strings are dropped first, then everything but brackets; each round removes the innermost
    pairs, so a document of depth d is empty after d rounds. Malformed JSON is the decoder's business.
    """
    brackets = _STRING.sub(b"", body).translate(None, delete=_NOT_BRACKETS)
    for depth in range(limit):
        if not brackets:
            return False
        shorter = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if shorter == brackets:  # unbalanced: what is left opens this many more levels
            return depth + brackets.count(b"[") + brackets.count(b"{") > limit
        brackets = shorter
    return bool(brackets)


async def screen_request(request: Any) -> None:
    """Litestar `before_request`: refuse what no handler can take safely (ApiError, so the one error shape)."""
    for key, value in request.query_params.multi_items():
        if "\x00" in key or "\x00" in value:
            raise ApiError(ErrorCode.INVALID, f"query parameter {key[:40]!r} contains a NUL character")
    if request.method not in ("POST", "PUT", "PATCH"):
        return
    if request.headers.get("content-type", "").lower().startswith(_FORM_TYPES):
        return
    screen_body(await request.body())


def screen_body(body: bytes) -> None:
    """ApiError unless `body` is free of NUL characters and nested at most MAX_DEPTH deep."""
    if b"\x00" in body or _NUL_ESCAPE.search(body):
        raise ApiError(ErrorCode.INVALID, "the body contains a NUL character (\\u0000), which no text field may hold")
    if json_depth_exceeds(body, MAX_DEPTH):
        raise ApiError(ErrorCode.MALFORMED, f"the body nests arrays or objects more than {MAX_DEPTH} deep")
