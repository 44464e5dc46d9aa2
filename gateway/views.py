"""Bus records as HTTP JSON: every field, defaults included (the bus leaves defaults off the wire).

`FullResponse` is the app's response class (`Litestar(response_class=...)`): a handler returns its typed
answer, the OpenAPI document shows that type's schema, and the body carries every field of it. A field
left `msgspec.UNSET` (a secret shown once) is left out, as msgspec leaves it out.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from litestar import Response
from litestar.serialization import default_serializer
from litestar.types import Serializer

__all__ = ["FullResponse", "full", "full_json"]

T = TypeVar("T")


def full(value: Any) -> Any:
    """`value` as JSON-ready builtins with every field of every Struct in it (but the UNSET ones)."""
    if isinstance(value, msgspec.Struct):
        # __struct_fields__: the names, without msgspec.structs.fields' per-call annotation lookup; keyed by
        # the name each is encoded under (a field renamed, as `from` is, keeps its wire name)
        return {
            key: full(field)
            for name, key in zip(value.__struct_fields__, value.__struct_encode_fields__, strict=True)
            if (field := getattr(value, name)) is not msgspec.UNSET
        }
    if isinstance(value, dict):
        return {k: full(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [full(v) for v in value]
    return msgspec.to_builtins(value)


def full_json(value: Any) -> bytes:
    return msgspec.json.encode(full(value))


class FullResponse(Response[T]):
    """A JSON response with every field of the Structs in it."""

    def render(self, content: Any, media_type: str, enc_hook: Serializer = default_serializer) -> bytes:
        if isinstance(content, msgspec.Struct | list | dict) and media_type.startswith("application/json"):
            return msgspec.json.encode(full(content), enc_hook=enc_hook)
        return super().render(content, media_type, enc_hook)
