"""Steering a running turn: POST /v1/runs/{id}/messages (actors/executor/steering.py), over HTTP against real
NATS and PostgreSQL, the executor and conversation actors in-process, only the LLM replaced."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from httpx_sse import aconnect_sse
from pydantic_ai.messages import ModelRequest, ModelResponse
from pydantic_ai.models.test import TestModel

from tests.conftest import Platform, wait_until
from tests.models import Gate, prompts_of

Start = Callable[..., Awaitable[Platform]]


async def _conversation(client: httpx.AsyncClient) -> str:
    response = await client.post("/v1/conversations", json={})
    assert response.status_code == 201, response.text
    conversation_id: str = response.json()["id"]
    return conversation_id


async def _events(client: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    """The ended run's output, replayed as SSE."""
    async with aconnect_sse(client, "GET", f"/v1/runs/{run_id}/events") as source:
        assert source.response.status_code == 200
        return [{"event": sse.event, "data": json.loads(sse.data)} async for sse in source.aiter_sse()]


async def test_a_message_sent_to_a_running_turn_reaches_its_next_model_request_and_the_history(
    start_platform: Start,
) -> None:
    gate = Gate(["thinking "], ["done"])
    platform = await start_platform(gate.model())
    async with platform.client() as client:
        conversation_id = await _conversation(client)
        url = f"/v1/conversations/{conversation_id}/messages"
        turn = asyncio.create_task(client.post(url, json={"message": "go"}))
        async with asyncio.timeout(10):
            await gate.reached.wait()  # the model holds its first request
        run_id = (await client.get(f"/v1/conversations/{conversation_id}")).json()["active_run_id"]

        steer = {"content": "also mention cats", "message_id": "m-1"}
        sent = await client.post(f"/v1/runs/{run_id}/messages", json=steer)
        assert sent.status_code == 202, sent.text
        assert sent.json() == {"run_id": run_id, "message_id": "m-1", "seq": 1, "delivered": False}
        again = await client.post(f"/v1/runs/{run_id}/messages", json=steer)  # a retry: the same message
        assert again.status_code == 202 and again.json()["seq"] == 1
        other = await client.post(f"/v1/runs/{run_id}/messages", json={**steer, "content": "something else"})
        assert other.status_code == 409 and other.json()["error"]["details"]["message_id"] == "m-1"
        await wait_until(
            lambda: _true(platform.executor.steering.queued(run_id) == 1), what="the message in the agent's queue"
        )

        gate.opened.set()  # the model answers; the run goes on to one more request, carrying the message
        assert (await turn).status_code == 200
        assert [prompts_of(r) for r in gate.requests] == [["go"], ["go", "also mention cats"]]

        events = await _events(client, run_id)
        kinds = [e["event"] for e in events]
        assert kinds.count("steered") == 1 and kinds.index("steered") < kinds.index("completed")
        steered = events[kinds.index("steered")]["data"]
        assert steered["message_id"] == "m-1" and steered["seq"] == 1 and steered["delivered"] is True
        assert await platform.executor.steering.pending(run_id) == []

        # the conversation keeps it in the turn's history, in order: the next turn's model is sent all of it
        assert (await client.post(url, json={"message": "next"})).status_code == 200
        history = gate.requests[-1]
        assert prompts_of(history) == ["go", "also mention cats", "next"]
        assert [type(m) for m in history] == [ModelRequest, ModelResponse, ModelRequest, ModelResponse, ModelRequest]

        ended = await client.post(f"/v1/runs/{run_id}/messages", json={"content": "too late"})
        assert ended.status_code == 409 and ended.json()["error"]["code"] == "conflict"
        assert ended.json()["error"]["message"] == "the run has ended"


async def test_another_tenants_run_is_not_found_and_a_bad_body_stores_nothing(start_platform: Start) -> None:
    platform = await start_platform(TestModel(custom_output_text="ok", call_tools=[]))
    async with platform.client() as client:
        conversation_id = await _conversation(client)
        turn = await client.post(f"/v1/conversations/{conversation_id}/messages", json={"message": "hi"})
        run_id = turn.json()["run_id"]
        stranger = await platform.key_for("t2")
        async with platform.client(stranger) as other:
            theirs = await other.post(f"/v1/runs/{run_id}/messages", json={"content": "hijack"})
        assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "not_found"
        unknown = await client.post("/v1/runs/no-such-run/messages", json={"content": "hello"})
        assert unknown.status_code == 404
        for body in ({}, {"content": ""}, {"content": "x", "extra": 1}, {"content": "x", "message_id": "not an id"}):
            bad = await client.post(f"/v1/runs/{run_id}/messages", json=body)
            assert bad.status_code == 422, body
            assert bad.json()["error"]["code"] == "invalid", bad.json()
    assert await platform.executor.steering.pending(run_id) == []


async def _true(value: bool) -> bool:
    return value
