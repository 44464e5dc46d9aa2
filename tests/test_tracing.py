"""OpenTelemetry traces: one chat turn is one trace, from the HTTP request through the bus and both
actors to the model request, the tool call and the SQL, read from the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pydantic_ai.models.test import TestModel

from bus import subjects
from bus.client import Bus
from bus.config import BusConfig
from bus.errors import BusError
from bus.headers import Trace
from bus.tracing import enabled, setup_tracing, stop_tracing
from schemas.health import HealthCheck, HealthReport
from tests.conftest import ActorProcess, Platform, wait_until
from tests.receivers import HttpReceiver

Start = Callable[..., Awaitable[Platform]]
EXPORTER = InMemorySpanExporter()  # a process's TracerProvider is set once: every test here shares it


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    assert setup_tracing("agentbus-test", exporter=EXPORTER)
    assert setup_tracing("agentbus-test", exporter=EXPORTER)  # again: the same provider, the exporter once
    EXPORTER.clear()
    yield EXPORTER
    stop_tracing()  # the rest of the suite runs untraced, as a process without an OTLP endpoint does
    EXPORTER.clear()


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def ancestors(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[str]:
    chain: list[str] = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        chain.append(span.name)
    return chain


async def test_a_chat_turn_is_one_trace_from_the_request_to_the_model_the_tool_and_the_database(
    start_platform: Start, spans: InMemorySpanExporter
) -> None:
    platform = await start_platform(TestModel(call_tools=["current_time"], custom_output_text="It is now."))
    async with platform.client() as client:
        conversation = (await client.post("/v1/conversations", json={})).json()["id"]
        spans.clear()
        caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"  # the caller's own trace, continued
        turn = await client.post(
            f"/v1/conversations/{conversation}/messages",
            json={"message": "What time is it?"},
            headers={"traceparent": caller},
        )
        assert turn.status_code == 200, turn.text

    async def turn_done() -> bool:
        return any(s.name == "handle executor.evt.finished" for s in spans.get_finished_spans())

    await wait_until(turn_done, timeout=15, what="the turn's spans")
    finished = spans.get_finished_spans()
    (request,) = named(finished, "POST /v1/conversations/{conversation_id}/messages")
    assert request.kind is SpanKind.SERVER and request.attributes is not None
    assert request.attributes["http.response.status_code"] == 200 and request.attributes["agentbus.tenant"] == "t1"
    trace_id = request.context.trace_id
    assert f"{trace_id:032x}" == caller.split("-")[1]
    turn_spans = tuple(s for s in finished if s.context.trace_id == trace_id)
    by_id = {s.context.span_id: s for s in turn_spans}

    (conversation_handler,) = named(turn_spans, "handle conversation.cmd")
    (executor_handler,) = named(turn_spans, "handle executor.cmd")
    assert conversation_handler.kind is SpanKind.CONSUMER and executor_handler.kind is SpanKind.CONSUMER
    assert (
        conversation_handler.attributes is not None
        and conversation_handler.attributes["agentbus.actor"] == "conversation"
    )
    assert executor_handler.attributes is not None and executor_handler.attributes["agentbus.outcome"] == "acked"
    assert ancestors(executor_handler, by_id)[-1] == request.name  # joined hop by hop, back to the request
    assert "handle conversation.cmd" in ancestors(executor_handler, by_id)

    models = [s for s in turn_spans if s.name.startswith("chat ")]  # pydantic-ai's own model request spans
    assert models and all(executor_handler.name in ancestors(s, by_id) for s in models)
    tools = [s for s in turn_spans if "current_time" in s.name]  # pydantic-ai's tool call span
    assert tools and executor_handler.name in ancestors(tools[0], by_id)
    sql = [s for s in turn_spans if s.attributes and s.attributes.get("db.system") == "postgresql"]
    assert any(executor_handler.name in ancestors(s, by_id) for s in sql)  # the run's records, by asyncpg
    assert any(conversation_handler.name in ancestors(s, by_id) for s in sql)
    # every handler that took part in the turn is in this one trace
    for name in ("handle conversation.cmd", "handle executor.cmd", "handle executor.evt.finished"):
        assert {s.context.trace_id for s in named(finished, name)} == {trace_id}
    # the run's end, published by the executor's handler, is handled by the conversation (which stores the reply)
    (reply_stored,) = named(finished, "handle executor.evt.finished")
    assert ancestors(reply_stored, by_id)[:2] == ["publish executor.evt.finished", executor_handler.name]
    # no prompt or output text in any span
    assert not any("What time is it?" in str(s.attributes) or "It is now." in str(s.attributes) for s in turn_spans)


def test_without_an_endpoint_or_exporter_nothing_is_traced() -> None:
    assert not setup_tracing("agentbus-test", env={})
    assert not enabled()


async def test_an_actor_process_exports_its_spans_over_otlp_when_an_endpoint_is_set(
    bus_config: BusConfig, spawn_actor: Callable[..., ActorProcess]
) -> None:
    caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with HttpReceiver() as collector:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        notifier = spawn_actor("notifier", env)
        bus = await Bus.connect(bus_config)
        try:

            async def answered() -> bool:
                health = subjects.service(subjects.ActorName.NOTIFIER, "health")
                try:
                    await bus.request(health, HealthCheck(), HealthReport, trace=Trace(tenant="t1", traceparent=caller))
                except BusError:
                    return False
                return True

            await wait_until(answered, timeout=30, what="the notifier's health endpoint")
        finally:
            await bus.close()
        await asyncio.to_thread(notifier.stop)  # its provider flushes what is left on exit, to the collector here
        exported = ExportTraceServiceRequest()
        spans: list[tuple[str, str, bytes]] = []
        for received in collector.requests:
            assert received.path == "/v1/traces" and received.headers["content-type"] == "application/x-protobuf"
            exported.ParseFromString(received.body)
            for resource_spans in exported.resource_spans:
                attributes = resource_spans.resource.attributes
                service = next(a.value.string_value for a in attributes if a.key == "service.name")
                spans += [(service, s.name, s.trace_id) for scoped in resource_spans.scope_spans for s in scoped.spans]
    assert notifier.proc is not None and notifier.proc.returncode == 0, notifier.log()
    assert ("agentbus-notifier", "serve notifier.health", bytes.fromhex(caller.split("-")[1])) in spans
    assert any(name in ("BEGIN;", "SELECT", "CREATE") for _, name, _ in spans)  # its SQL, through asyncpg
