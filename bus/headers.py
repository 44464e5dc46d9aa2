"""Header names as an enum, and the context that carries them through every hop."""

from __future__ import annotations

import contextvars
import enum
import os
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Header", "Trace", "current_trace", "new_id", "use_trace"]


class Header(enum.StrEnum):
    MSG_ID = "Nats-Msg-Id"
    CORRELATION_ID = "Ab-Correlation-Id"
    TRACEPARENT = "traceparent"
    TENANT = "Ab-Tenant"
    SENT_AT = "Ab-Sent-At"  # unix time in nanoseconds, as text
    RUN_ID = "Ab-Run-Id"
    DEAD_REASON = "Ab-Dead-Reason"
    DEAD_SUBJECT = "Ab-Dead-Subject"
    DEAD_STREAM_SEQ = "Ab-Dead-Stream-Seq"
    DEAD_DELIVERIES = "Ab-Dead-Deliveries"


def new_id() -> str:
    """A time-ordered UUIDv7 as text: sortable ids keep Postgres indexes and logs tidy."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64 | 0b10 << 62 | rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def _new_traceparent(trace_id: str | None = None) -> str:
    return f"00-{trace_id or secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


@dataclass(frozen=True, slots=True)
class Trace:
    """What every message carries: who it is for, which request it belongs to, and the trace."""

    tenant: str
    correlation_id: str = field(default_factory=new_id)
    traceparent: str = field(default_factory=_new_traceparent)
    run_id: str | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str] | None, *, tenant: str | None = None) -> Trace:
        h = headers or {}
        return cls(
            tenant=h.get(Header.TENANT, tenant or ""),
            correlation_id=h.get(Header.CORRELATION_ID) or new_id(),
            traceparent=h.get(Header.TRACEPARENT) or _new_traceparent(),
            run_id=h.get(Header.RUN_ID),
        )

    def child(self, *, tenant: str | None = None, run_id: str | None = None) -> Trace:
        """The same trace one hop further: a new span id under the same trace id."""
        parts = self.traceparent.split("-")
        trace_id = parts[1] if len(parts) == 4 else None
        return Trace(
            tenant=tenant if tenant is not None else self.tenant,
            correlation_id=self.correlation_id,
            traceparent=_new_traceparent(trace_id),
            run_id=run_id if run_id is not None else self.run_id,
        )

    def headers(self, *, msg_id: str | None = None) -> dict[str, str]:
        h = {
            Header.TENANT.value: self.tenant,
            Header.CORRELATION_ID.value: self.correlation_id,
            Header.TRACEPARENT.value: self.traceparent,
            Header.SENT_AT.value: str(time.time_ns()),
        }
        if self.run_id:
            h[Header.RUN_ID.value] = self.run_id
        if msg_id:
            h[Header.MSG_ID.value] = msg_id
        return h


_current: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("agentbus_trace", default=None)


def current_trace() -> Trace | None:
    return _current.get()


def use_trace(trace: Trace) -> contextvars.Token[Trace | None]:
    """Make `trace` the one that publishes in this task inherit (and that logs show)."""
    return _current.set(trace)
