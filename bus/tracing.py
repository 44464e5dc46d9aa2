"""OpenTelemetry traces across every hop: HTTP request → bus publish → actor handler → model → tool → SQL.

Each process calls `setup_tracing(service)` once at start. With OTEL_EXPORTER_OTLP_ENDPOINT (or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) set, it installs the SDK's TracerProvider with an OTLP/HTTP exporter,
pydantic-ai's own instrumentation (model request and tool call spans, without prompt or output content)
and asyncpg's (a span per SQL statement). Without one, nothing is installed: the API stays the no-op
one and the bus does no tracing work at all (`enabled()` is false).

The bus carries the W3C `traceparent` header on every message already (bus/headers.py); here it is read
and written by OpenTelemetry's own TraceContext propagator. A publish is a PRODUCER span whose context
goes out in the header; the handler of the message is a CONSUMER span under it; a service request is a
CLIENT span, its endpoint a SERVER span. A process's TracerProvider can be set once: calling
`setup_tracing` again (tests, several actors in one process) keeps it and only adds the exporter given
(each exporter once); `stop_tracing` turns the tracing work off again, and `setup_tracing` back on.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from bus.headers import Header

__all__ = [
    "consumed",
    "enabled",
    "ended",
    "produced",
    "requested",
    "responded",
    "served",
    "setup_tracing",
    "stop_tracing",
    "traceparent",
]

_PROPAGATOR = TraceContextTextMapPropagator()
_tracer = trace.get_tracer("agentbus")
_state: dict[str, bool] = {"enabled": False, "exporting": False}
_exporters: list[SpanExporter] = []  # the ones given, each added once


def enabled() -> bool:
    return _state["enabled"]


def setup_tracing(service: str, *, exporter: SpanExporter | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Trace this process as `service` (agentbus-gateway, agentbus-executor, ...) if an OTLP endpoint is
    configured or `exporter` is given (a test's in-memory one); whether tracing is on."""
    e = os.environ if env is None else env
    endpoint = e.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or e.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if exporter is None and not endpoint:
        return enabled()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        name = e.get("OTEL_SERVICE_NAME") or service  # the standard variable wins, as elsewhere in OpenTelemetry
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
        trace.set_tracer_provider(provider)
    if not enabled():
        _instrument(provider, on=True)
    if endpoint and not _state["exporting"]:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # reads the OTEL_EXPORTER_OTLP_* env
        _state["exporting"] = True
    if exporter is not None and all(exporter is not given for given in _exporters):
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        _exporters.append(exporter)
    _state["enabled"] = True
    return True


def stop_tracing() -> None:
    """Back to no tracing work (a test suite's later tests): the provider stays, nothing reaches it."""
    if enabled():
        _instrument(None, on=False)
        _state["enabled"] = False


def _instrument(provider: TracerProvider | None, *, on: bool) -> None:
    """The libraries' own instrumentation: pydantic-ai (model requests, tool calls) and asyncpg (SQL)."""
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from pydantic_ai import Agent
    from pydantic_ai.models.instrumented import InstrumentationSettings

    if on:
        # no prompts, outputs or tool arguments in spans: they are tenants' data
        Agent.instrument_all(InstrumentationSettings(tracer_provider=provider, include_content=False))
        AsyncPGInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    else:
        Agent.instrument_all(False)
        AsyncPGInstrumentor().uninstrument()  # type: ignore[no-untyped-call]


def traceparent() -> str | None:
    """The W3C traceparent of the current span, if one is recording (for a Trace the gateway starts)."""
    if not enabled():
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get(Header.TRACEPARENT.value)


def _parent(headers: Mapping[str, str] | None) -> otel_context.Context:
    return _PROPAGATOR.extract(headers or {})


def _same_trace(headers: Mapping[str, str]) -> bool:
    """Whether the current span belongs to the trace `headers` name (a handler publishing for its own
    message, not for another flow it happens to drive)."""
    current = trace.get_current_span().get_span_context()
    if not current.is_valid:
        return False
    theirs = trace.get_current_span(_parent(headers)).get_span_context()
    return theirs.trace_id == current.trace_id


@contextlib.contextmanager
def produced(subject: str, kind: str, headers: MutableMapping[str, str], *, span: bool = True) -> Iterator[None]:
    """Around a publish: a PRODUCER span (under the current span when it is of the same trace, else
    under the message's traceparent), whose context replaces the traceparent in `headers`. With
    `span=False` (a run's many output deltas) only the header is set, to the current span's context."""
    parent = otel_context.get_current() if _same_trace(headers) else _parent(headers)
    if not span:
        _PROPAGATOR.inject(headers, context=parent)
        yield
        return
    attributes = {"messaging.system": "nats", "messaging.destination.name": subject, "agentbus.subject_kind": kind}
    name = f"publish {kind}"
    with _tracer.start_as_current_span(name, context=parent, kind=SpanKind.PRODUCER, attributes=attributes):
        _PROPAGATOR.inject(headers)
        yield


@contextlib.contextmanager
def consumed(name: str, headers: Mapping[str, str] | None, attributes: Mapping[str, Any]) -> Iterator[Span]:
    """A CONSUMER span for handling one bus message, under the span that published it."""
    with _tracer.start_as_current_span(
        name, context=_parent(headers), kind=SpanKind.CONSUMER, attributes=dict(attributes)
    ) as span:
        yield span


def responded(status: int, *, tenant: str | None) -> None:
    """Note an HTTP response's status (and the caller's tenant) on the current (request) span."""
    span = trace.get_current_span()
    span.set_attribute("http.response.status_code", status)
    if tenant:
        span.set_attribute("agentbus.tenant", tenant)
    if status >= 500:
        span.set_status(StatusCode.ERROR)


def ended(span: Span, outcome: str, *, failed: bool) -> None:
    """Note how the work of `span` ended (`agentbus.outcome`), marking the span an error if it failed."""
    span.set_attribute("agentbus.outcome", outcome)
    if failed:
        span.set_status(StatusCode.ERROR, outcome)


@contextlib.contextmanager
def requested(subject: str, headers: MutableMapping[str, str]) -> Iterator[None]:
    """A CLIENT span around a service request; its context goes out in `headers`."""
    parent = otel_context.get_current() if _same_trace(headers) else _parent(headers)
    verb = ".".join(subject.split(".")[1::2][:2])  # ab.<actor>.svc.<verb> -> <actor>.<verb>
    attributes = {"rpc.system": "nats", "rpc.method": subject}
    with _tracer.start_as_current_span(f"request {verb}", context=parent, kind=SpanKind.CLIENT, attributes=attributes):
        _PROPAGATOR.inject(headers)
        yield


@contextlib.contextmanager
def served(name: str, headers: Mapping[str, str] | None, attributes: Mapping[str, Any]) -> Iterator[Span]:
    """A SERVER span: an HTTP request, or a service endpoint answering one, under the caller's traceparent."""
    with _tracer.start_as_current_span(
        name, context=_parent(headers), kind=SpanKind.SERVER, attributes=dict(attributes)
    ) as span:
        yield span
