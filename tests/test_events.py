"""The tenant's event feed (GET /v1/events, /v1/events/ws): every actor's events in one order with one cursor,
resumable, filtered by type, and only the caller tenant's."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import websockets

from bus.streams import EVENTS
from tests.conftest import Platform, sse_messages
from tests.models import replying

Start = Callable[..., Awaitable[Platform]]


async def _delegate(client: httpx.AsyncClient, prompt: str) -> str:
    """A delegated task whose result goes to the in-app channel; its id."""
    body = {"task_type": "delegation", "prompt": prompt, "notification_config": {"channels": ["in_app"]}}
    response = await client.post("/v1/tasks", json=body)
    assert response.status_code == 202, response.text
    task_id: str = response.json()["id"]
    return task_id


def _feed(
    client: httpx.AsyncClient, **kwargs: Any
) -> contextlib.AbstractAsyncContextManager[AsyncIterator[dict[str, Any]]]:
    return sse_messages(client, "/v1/events", **kwargs)


async def _until(events: AsyncIterator[dict[str, Any]], wanted: str) -> list[dict[str, Any]]:
    """Every event up to and including the first of type `wanted`."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(30):
        while not seen or seen[-1]["event"] != wanted:
            seen.append(await anext(events))
    return seen


async def test_one_feed_orders_every_actors_events_of_the_tenant_and_resumes(start_platform: Start) -> None:
    platform = await start_platform(replying(lambda messages, info: "done"), background=True)
    other_key = await platform.key_for("t2")
    async with platform.client() as client, platform.client(other_key) as other:
        async with _feed(client) as events:  # from now on
            await _delegate(other, "their task")
            task_id = await _delegate(client, "my task")
            seen = await _until(events, "notifier.in_app")

        types = [e["event"] for e in seen]
        assert {"executor.finished", "scheduler.completed", "notifier.in_app"} <= set(types), types
        assert types.index("executor.finished") < types.index("scheduler.completed") < types.index("notifier.in_app")
        ids = [e["id"] for e in seen]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)  # one order, one cursor
        for e in seen:
            data = e["data"]
            assert data["id"] == e["id"] and data["type"] == e["event"]
            assert data["subject"].split(".")[3] == "t1"  # never t2's
        completed = next(e["data"] for e in seen if e["event"] == "scheduler.completed")
        assert completed["entity_id"] == task_id and completed["data"]["run"]["status"] == "completed"
        note = next(e["data"] for e in seen if e["event"] == "notifier.in_app")
        assert note["data"]["body"] == "done" and note["published_at"]

        # Last-Event-ID resumes right after an event: the same events again, in the same order
        async with _feed(client, headers={"Last-Event-ID": str(ids[0])}) as events:
            again = await _until(events, "notifier.in_app")
        assert [e["id"] for e in again] == ids[1:]
        # `after` with a filter: only those types, from the start of the stream
        async with _feed(client, params={"after": 0, "types": "executor.finished,notifier.*"}) as events:
            filtered = await _until(events, "notifier.in_app")
        assert {e["event"] for e in filtered} <= {"executor.finished", "notifier.in_app", "notifier.delivered"}
        assert "executor.finished" in {e["event"] for e in filtered}

        # the WebSocket: the same objects, one text frame each, resumed with ?after=
        token = (await client.post("/v1/ws-tokens")).json()["token"]
        url = platform.url.replace("http", "ws") + f"/v1/events/ws?token={token}&after={ids[0]}"
        async with websockets.connect(url) as socket, asyncio.timeout(30):
            frames = [json.loads(await socket.recv()) for _ in range(len(ids) - 1)]
        assert frames == [e["data"] for e in again]

        # what t2 sees is t2's alone
        async with _feed(other, params={"after": 0}) as events:
            theirs = await _until(events, "notifier.in_app")
        assert {e["data"]["subject"].split(".")[3] for e in theirs} == {"t2"}
        assert not {e["id"] for e in theirs} & set(ids)

        bad = [
            await client.get("/v1/events", params={"types": "nobody.finished"}),
            await client.get("/v1/events", params={"types": "executor"}),
            await client.get("/v1/events", params={"types": "executor.fin ished"}),
            await client.get("/v1/events", headers={"Last-Event-ID": "soon"}),
            await client.get("/v1/events", params={"after": -1}),
        ]
        assert [r.status_code for r in bad] == [422] * 5
        assert all(r.json()["error"]["code"] == "invalid" for r in bad)
        # on the WebSocket: the error's frame, then 4000 + the status (4422)
        url = platform.url.replace("http", "ws") + "/v1/events/ws?types=nobody.finished"
        headers = {"Authorization": f"Bearer {platform.key}"}
        async with websockets.connect(url, additional_headers=headers) as socket, asyncio.timeout(30):
            assert json.loads(await socket.recv())["error"]["code"] == "invalid"
            with pytest.raises(websockets.ConnectionClosed):
                await socket.recv()
        assert socket.close_code == 4422

    info = await platform.bus.js.stream_info(EVENTS.name)
    assert info.config.subjects in (None, []) and {s.name for s in info.config.sources or []} == {
        "AB_EXECUTOR_EVT",
        "AB_SCHEDULER_EVT",
        "AB_RESEARCH_EVT",
        "AB_NOTIFIER_EVT",
    }  # sourced from the event streams only, never a work queue


async def test_the_feed_carries_a_research_jobs_progress_and_its_delivery(start_platform: Start) -> None:
    from tests.receivers import HttpReceiver
    from tests.test_research import Researchers, _ingest

    platform = await start_platform(Researchers().model(), background=True)
    async with HttpReceiver() as receiver, platform.client() as client:
        await _ingest(client)
        async with _feed(client, params={"types": "research.*,notifier.*"}) as events:
            config = {"channels": ["webhook"], "webhook_url": f"{receiver.url}/done"}
            body = {"question": "Which energy sources exist?", "max_depth": 1, "notification_config": config}
            started = await client.post("/v1/research", json=body)
            assert started.status_code == 202, started.text
            job_id = started.json()["id"]
            seen = await _until(events, "notifier.delivered")
        # the WebSocket resumes from a Last-Event-ID header too (a client that is not a browser)
        url = platform.url.replace("http", "ws") + "/v1/events/ws?types=research.*,notifier.*"
        headers = {"Authorization": f"Bearer {platform.key}", "Last-Event-ID": str(seen[0]["id"])}
        async with websockets.connect(url, additional_headers=headers) as socket, asyncio.timeout(30):
            frames = [json.loads(await socket.recv()) for _ in range(len(seen) - 1)]

    types = [e["event"] for e in seen]
    assert {"research.phase", "research.subrun_started", "research.subrun_finished", "research.finished"} <= set(types)
    assert types.index("research.subrun_started") < types.index("research.finished") < types.index("notifier.delivered")
    assert {e["data"]["entity_id"] for e in seen if e["event"].startswith("research.")} == {job_id}
    delivered = seen[-1]["data"]["data"]["delivery"]
    assert (delivered["channel"], delivered["status"], delivered["task_run_id"]) == ("webhook", "delivered", job_id)
    (hook,) = receiver.requests
    assert hook.path == "/done" and hook.headers["webhook-id"] == delivered["id"]
    assert frames == [e["data"] for e in seen[1:]]
