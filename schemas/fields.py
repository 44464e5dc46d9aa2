"""Constrained field types of the bus schemas: the limits every decoder checks (the gateway first, so nothing
out of bounds reaches the bus) and the OpenAPI document shows.

A `msgspec.Meta` on a type is checked on decode only; constructing a Struct in code checks nothing.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = [
    "AgentName",
    "CronExpression",
    "DocumentType",
    "Metadata",
    "NatsPattern",
    "PipelineName",
    "Prompt",
    "Seconds",
    "TimeZone",
]

AgentName = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9_.:-]{1,100}$",
        description="an agent of the executor (`GET /v1/agents` lists them), or `pipeline:<name>`",
    ),
]
PipelineName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
Prompt = Annotated[str, msgspec.Meta(min_length=1, max_length=100_000)]
TimeZone = Annotated[
    str,
    msgspec.Meta(pattern=r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,2}$", max_length=64, examples=["Europe/Paris"]),
]
"""An IANA time zone name; whether the zone exists is checked where it is used (zoneinfo)."""
CronExpression = Annotated[str, msgspec.Meta(max_length=200, pattern=r"^[^\x00-\x1f]+$")]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=366 * 86_400)]
"""A positive duration of up to a year."""
NatsPattern = Annotated[str, msgspec.Meta(pattern=r"^[^\s\x00]{1,255}$")]
MetadataKey = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
MetadataValue = Annotated[str, msgspec.Meta(max_length=2_000)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], msgspec.Meta(max_length=50)]
DocumentType = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^(text/plain|text/markdown|text/x-markdown|text/html|application/pdf)\s*(;[^\x00]{0,100})?$",
        description="text/plain, text/markdown, text/html or application/pdf (its bytes base64-encoded as content)",
    ),
]
