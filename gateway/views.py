"""Bus records as HTTP JSON: every field, defaults included (the bus leaves defaults off the wire)."""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["full", "full_json"]


def full(value: Any) -> Any:
    """`value` as JSON-ready builtins with every field of every Struct in it."""
    if isinstance(value, msgspec.Struct):
        # __struct_fields__: the names, without msgspec.structs.fields' per-call annotation lookup
        return {name: full(getattr(value, name)) for name in value.__struct_fields__}
    if isinstance(value, dict):
        return {k: full(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [full(v) for v in value]
    return msgspec.to_builtins(value)


def full_json(value: Any) -> bytes:
    return msgspec.json.encode(full(value))
