"""Bad input gets a clear 4xx with one error shape; keys, tenants and retries behave."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from pydantic_ai.models.test import TestModel

from tests.conftest import Platform
from tests.models import Gate

Start = Callable[..., Awaitable[Platform]]


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code and body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


async def test_missing_or_unknown_keys_get_401(start_platform: Start) -> None:
    platform = await start_platform()
    async with httpx.AsyncClient(base_url=platform.url) as anonymous:
        response = await anonymous.get("/v1/conversations/abc")
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
        assert_error(await anonymous.get("/v1/runs/abc", headers={"Authorization": "Basic eDp5"}), 401, "unauthorized")
    async with platform.client(key="ab_not-a-real-key") as forged:
        assert_error(await forged.post("/v1/conversations", json={}), 401, "unauthorized")


async def test_another_tenants_ids_answer_404(start_platform: Start) -> None:
    platform = await start_platform(TestModel(custom_output_text="mine", call_tools=[]))
    other_key = await platform.key_for("t2")
    async with platform.client() as mine, platform.client(key=other_key) as theirs:
        conversation_id = (await mine.post("/v1/conversations", json={})).json()["id"]
        run_id = (await mine.post(f"/v1/conversations/{conversation_id}/messages", json={"message": "x"})).json()[
            "run_id"
        ]
        assert_error(await theirs.get(f"/v1/conversations/{conversation_id}"), 404, "not_found")
        assert_error(await theirs.get(f"/v1/conversations/{conversation_id}/messages"), 404, "not_found")
        assert_error(
            await theirs.post(f"/v1/conversations/{conversation_id}/messages", json={"message": "hi"}), 404, "not_found"
        )
        assert_error(
            await theirs.put(f"/v1/conversations/{conversation_id}/context", json={"context": {}}), 404, "not_found"
        )
        assert_error(await theirs.post(f"/v1/conversations/{conversation_id}/continue"), 404, "not_found")
        assert_error(await theirs.get(f"/v1/runs/{run_id}"), 404, "not_found")
        assert_error(await theirs.get(f"/v1/runs/{run_id}/events"), 404, "not_found")
        assert_error(await theirs.post(f"/v1/runs/{run_id}/cancel"), 404, "not_found")
        assert (await mine.get(f"/v1/runs/{run_id}")).json()["status"] == "completed"
        # nothing of theirs changed what is mine
        listed = (await mine.get(f"/v1/conversations/{conversation_id}/messages")).json()["messages"]
        assert [m["content"] for m in listed] == ["x", "mine"]


async def test_idempotency_key_replays_the_first_answer_and_creates_nothing_new(start_platform: Start) -> None:
    platform = await start_platform(TestModel(custom_output_text="once", call_tools=[]))
    async with platform.client() as client:
        first = await client.post("/v1/conversations", json={}, headers={"Idempotency-Key": "create-1"})
        again = await client.post("/v1/conversations", json={}, headers={"Idempotency-Key": "create-1"})
        assert first.status_code == again.status_code == 201 and first.json() == again.json()
        assert again.headers["idempotent-replayed"] == "true"
        other = await client.post("/v1/conversations", json={}, headers={"Idempotency-Key": "create-2"})
        assert other.json()["id"] != first.json()["id"]
        url = f"/v1/conversations/{first.json()['id']}/messages"
        one = await client.post(url, json={"message": "hi"}, headers={"Idempotency-Key": "msg-1"})
        two = await client.post(url, json={"message": "hi"}, headers={"Idempotency-Key": "msg-1"})
        assert one.status_code == two.status_code == 200 and one.json() == two.json()
        listed = (await client.get(url)).json()["messages"]
        assert [m["role"] for m in listed] == ["user", "assistant"]
    async with platform.client(key=await platform.key_for("t2")) as stranger:  # keys are per tenant
        theirs = await stranger.post("/v1/conversations", json={}, headers={"Idempotency-Key": "create-1"})
        assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]


async def test_malformed_and_invalid_bodies(start_platform: Start) -> None:
    platform = await start_platform()
    async with platform.client() as client:
        conversation_id = (await client.post("/v1/conversations", json={})).json()["id"]
        url = f"/v1/conversations/{conversation_id}/messages"
        headers = {"Content-Type": "application/json"}
        assert_error(await client.post(url, content=b'{"message": "unterminated', headers=headers), 400, "malformed")
        assert_error(await client.post(url, json={"message": 5}), 422, "invalid")
        assert_error(await client.post(url, json={"message": ""}), 422, "invalid")
        assert_error(await client.post(url, json={"mesage": "typo"}), 422, "invalid")
        assert_error(await client.post("/v1/conversations", json={"pattern": "oracle"}), 422, "invalid")
        assert_error(await client.post("/v1/conversations", json={"policy": "sometimes"}), 422, "invalid")
        assert_error(await client.get(f"/v1/conversations/{conversation_id}/messages?limit=0"), 422, "invalid")
        # nothing was stored by any of them
        assert (await client.get(url)).json()["messages"] == []


async def test_oversized_bodies_get_413(start_platform: Start) -> None:
    platform = await start_platform(max_body_bytes=2_000)
    async with platform.client() as client:
        conversation_id = (await client.post("/v1/conversations", json={})).json()["id"]
        response = await client.post(f"/v1/conversations/{conversation_id}/messages", json={"message": "x" * 5_000})
        assert_error(response, 413, "too_large")


async def test_unknown_routes_methods_and_ids(start_platform: Start) -> None:
    platform = await start_platform()
    async with platform.client() as client:
        assert_error(await client.get("/v1/nothing-here"), 404, "not_found")
        assert_error(await client.delete("/v1/conversations"), 405, "invalid")
        assert_error(await client.get("/v1/conversations/no.such$id"), 404, "not_found")
        assert_error(await client.get("/v1/runs/01a2-unknown"), 404, "not_found")


@pytest.mark.parametrize("path", ["/schema/openapi.json", "/schema/swagger"])
async def test_openapi_docs_are_served(start_platform: Start, path: str) -> None:
    platform = await start_platform()
    async with httpx.AsyncClient(base_url=platform.url) as client:
        response = await client.get(path)
    assert response.status_code == 200


async def test_health_lists_nats_and_every_actor(start_platform: Start) -> None:
    platform = await start_platform()
    async with httpx.AsyncClient(base_url=platform.url) as client:
        response = await client.get("/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ok"] is True and body["nats"] == "ok"
    assert {name: a["checks"] for name, a in body["actors"].items()} == {
        "conversation": {"postgres": "ok"},
        "executor": {"postgres": "ok"},
    }


async def test_a_reply_that_takes_too_long_answers_504_with_the_run_to_follow(start_platform: Start) -> None:
    gate = Gate(["thinking "], ["done"])
    platform = await start_platform(gate.model(), reply_timeout_s=1.0)
    async with platform.client() as client:
        conversation_id = (await client.post("/v1/conversations", json={})).json()["id"]
        response = await client.post(f"/v1/conversations/{conversation_id}/messages", json={"message": "slow"})
        error = assert_error(response, 504, "timeout")
        run_id = error["details"]["run_id"]
        gate.opened.set()  # the run goes on and can be followed
        events = await client.get(f"/v1/runs/{run_id}/events")
        assert events.status_code == 200 and "event: completed" in events.text
