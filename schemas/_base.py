"""Base classes shared by every bus message."""

from __future__ import annotations

import msgspec

__all__ = ["Message", "Record"]


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", omit_defaults=True):
    """A tagged bus message; subclasses set ``tag=...`` so unions decode by their ``type`` field."""


class Record(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A plain value carried inside messages (not tagged, never sent on its own)."""
