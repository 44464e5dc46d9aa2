"""The gateway's access log: one line per HTTP request, and the correlation id on every response, the
same id the request's bus messages carry."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import pytest
import websockets
from pydantic_ai.models.test import TestModel
from structlog.testing import capture_logs

from bus import subjects
from bus.streams import RUN_OUT
from schemas.runs import TERMINAL_OUTPUTS, RunOutput
from tests.conftest import Platform, wait_until

Start = Callable[..., Awaitable[Platform]]


def _lines(captured: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [entry for entry in captured if entry.get("event") == "request"]


async def test_every_request_gets_one_log_line_and_its_correlation_id_which_its_bus_messages_carry(
    start_platform: Start,
) -> None:
    platform = await start_platform(TestModel(custom_output_text="Hello!", call_tools=[]))
    with capture_logs() as captured:
        async with platform.client() as client:
            created = await client.post("/v1/conversations", json={}, headers={"X-Correlation-Id": "order-42"})
            conversation_id = created.json()["id"]
            turn = await client.post(f"/v1/conversations/{conversation_id}/messages", json={"message": "Hi"})
            too_long = await client.get("/v1/agents", headers={"X-Correlation-Id": "x" * 129})
            missing = await client.get("/v1/conversations/none-such")
            unrouted = await client.get("/v1/no-such-route")
        async with platform.client(key="not-a-key") as stranger:
            refused = await stranger.get("/v1/agents")
    responses = [created, turn, too_long, missing, unrouted, refused]
    lines = _lines(captured)

    # the caller's id is kept; without one (or with one unfit for a header) the gateway makes one
    ids = [r.headers["x-correlation-id"] for r in responses]
    assert ids[0] == "order-42" and len(set(ids)) == len(ids)
    assert all(len(i) == 36 for i in ids[1:]), ids  # new UUIDv7s, not the 129 x's
    # one line per request, in order, with the route's template (not its ids), status and tenant
    assert [(line["method"], line["route"], line["status"], line["tenant"]) for line in lines] == [
        ("POST", "/v1/conversations", 201, "t1"),
        ("POST", "/v1/conversations/{conversation_id}/messages", 200, "t1"),
        ("GET", "/v1/agents", 200, "t1"),
        ("GET", "/v1/conversations/{conversation_id}", 404, "t1"),
        ("GET", None, 404, None),  # no route took it
        ("GET", "/v1/agents", 401, None),
    ]
    assert [line["correlation_id"] for line in lines] == ids
    assert all(line["log_level"] == "info" for line in lines)
    assert all(isinstance(line["ms"], float) and line["ms"] >= 0 for line in lines if line["route"])
    # no line carries a key or a body
    assert platform.key not in repr(lines) and "not-a-key" not in repr(lines) and "Hi" not in repr(lines)

    # the turn's messages on the bus carry the id its response named
    run_id = turn.json()["run_id"]
    output = platform.bus.replay(
        RUN_OUT.name,
        subjects.run_output("t1", run_id),
        RunOutput,
        until=lambda body: isinstance(body, TERMINAL_OUTPUTS),
    )
    carried = {envelope.trace.correlation_id async for envelope in output}
    assert carried == {ids[1]}


async def test_the_document_declares_the_correlation_header_on_every_response(start_platform: Start) -> None:
    platform = await start_platform()
    async with platform.client() as client:
        document = (await client.get("/schema/openapi.json")).json()
    responses = [
        (path, method, status, response)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in ("get", "post", "put", "patch", "delete")
        for status, response in operation["responses"].items()
    ]
    assert len(responses) > 100
    undeclared = [(p, m, s) for p, m, s, r in responses if "X-Correlation-Id" not in r.get("headers", {})]
    assert undeclared == []


async def test_a_websocket_gets_its_correlation_id_and_a_line_when_it_ends(start_platform: Start) -> None:
    platform = await start_platform(TestModel(custom_output_text="Hello!", call_tools=[]))
    url = platform.url.replace("http", "ws") + "/v1/events/ws"
    auth = {"Authorization": f"Bearer {platform.key}"}
    with capture_logs() as captured:
        async with websockets.connect(url, additional_headers={**auth, "X-Correlation-Id": "feed-1"}) as socket:
            assert socket.response is not None and socket.response.headers["x-correlation-id"] == "feed-1"
        async with websockets.connect(url + "?types=nobody.x", additional_headers=auth) as refused:
            assert "invalid" in str(await refused.recv())  # the error's frame, then the close
            with pytest.raises(websockets.ConnectionClosed):
                await refused.recv()

        async def both_ended() -> bool:
            return len([e for e in captured if e.get("event") == "websocket"]) == 2

        await wait_until(both_ended, what="a line for each socket")
    lines = [e for e in captured if e.get("event") == "websocket"]
    [closed] = [e for e in lines if e["correlation_id"] == "feed-1"]  # closed by the client
    [refused_line] = [e for e in lines if e["correlation_id"] != "feed-1"]
    assert (closed["route"], closed["status"], closed["tenant"]) == ("/v1/events/ws", 1000, "t1")
    assert closed["open_s"] >= 0 and closed["ms"] >= 0
    assert (refused_line["route"], refused_line["status"], refused_line["tenant"]) == ("/v1/events/ws", 4422, "t1")
