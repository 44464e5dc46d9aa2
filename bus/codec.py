"""One JSON encoder for the bus and one cached typed decoder per message type."""

from __future__ import annotations

from functools import cache
from typing import Any, TypeVar

import msgspec

__all__ = ["decode", "decode_union", "encode"]

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
encode = _encoder.encode


@cache
def _decoder(type_: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(type_)


def decode(data: bytes, type_: type[T]) -> T:
    """Decode `data` as the Struct `type_`; raises msgspec.ValidationError or DecodeError."""
    result: T = decode_union(data, type_)
    return result


def decode_union(data: bytes, type_form: Any) -> Any:
    """Decode `data` as a union of tagged Structs (an inbox); the caller narrows with `match`."""
    return _decoder(type_form).decode(data)
