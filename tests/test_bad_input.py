"""Hostile input: every bad request gets a 4xx (or a 503) with the one error shape, carries no exception
text or path, and nothing invalid reaches the bus; unknown agents are refused when named."""

from __future__ import annotations

import asyncio
import json
import re
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg
import httpx
import msgspec
import pytest
import websockets
from nats.aio.msg import Msg
from pydantic_ai.messages import ModelMessage, ModelResponse
from pydantic_ai.models.function import AgentInfo, FunctionModel

from actors._outbound import Allowlist
from actors.research.fetch import FetchError, fetch_text
from bus.embedded import EmbeddedPostgres
from schemas.tasks import TaskChangeFields, TaskSpec
from tests.conftest import Platform
from tests.test_gateway_errors import assert_error

Start = Callable[..., Awaitable[Platform]]
SCHEDULED = {"task_type": "scheduled", "prompt": "p", "interval_seconds": 3600}


def assert_clean(response: httpx.Response, status: int, code: str) -> dict[str, typing.Any]:
    """The error shape, and nothing in it that names a file or an exception."""
    error = assert_error(response, status, code)
    text = response.text
    for leak in ("site-packages", "/usr/", "/lib/python", "Traceback", "Error:", "asyncpg", "errno"):
        assert leak not in text, text[:500]
    return error


@asynccontextmanager
async def bus_requests(platform: Platform) -> AsyncIterator[list[str]]:
    """The commands and service requests sent while the block ran, but health checks and the agent catalog."""
    seen: list[str] = []

    async def record(msg: Msg) -> None:
        parts = msg.subject.split(".")
        if parts[0] == "ab" and parts[2:3] in (["cmd"], ["svc"]) and parts[-1] not in ("health", "agents"):
            seen.append(msg.subject)

    sub = await platform.bus.nc.subscribe(">", cb=record)
    try:
        yield seen
    finally:
        await platform.bus.nc.flush()
        await asyncio.sleep(0.1)
        await sub.unsubscribe()


async def test_json_nested_10000_deep_is_a_400_on_every_route_that_takes_a_body(start_platform: Start) -> None:
    platform = await start_platform()
    async with httpx.AsyncClient(base_url=platform.url) as anonymous:
        document = (await anonymous.get("/schema/openapi.json")).json()
    deep = b"[" * 10_000 + b"]" * 10_000
    unclosed = b'{"message": ' + b"[" * 10_000
    async with platform.client() as client, bus_requests(platform) as seen:
        for path, item in document["paths"].items():
            url = re.sub(r"\{[^}]+\}", "1", path)  # any id will do (an int id too): the body is refused first
            for method in {"post", "put", "patch"} & item.keys():
                for body in (deep, unclosed):
                    response = await client.request(
                        method, url, content=body, headers={"Content-Type": "application/json"}
                    )
                    assert_clean(response, 400, "malformed")
    assert seen == []


async def test_a_nul_character_in_any_string_or_query_is_a_422(start_platform: Start) -> None:
    platform = await start_platform()
    async with platform.client() as client:
        conversation_id = (await client.post("/v1/conversations", json={})).json()["id"]
        messages = f"/v1/conversations/{conversation_id}/messages"
        async with bus_requests(platform) as seen:
            assert_clean(await client.post(messages, json={"message": "a\u0000b"}), 422, "invalid")
            assert_clean(await client.post("/v1/conversations", json={"metadata": {"k\u0000": "v"}}), 422, "invalid")
            context = {"context": {"deep": [{"x": "\u0000"}]}}
            assert_clean(await client.put(f"/v1/conversations/{conversation_id}/context", json=context), 422, "invalid")
            assert_clean(await client.get(messages, params={"before": "a\u0000"}), 422, "invalid")
            assert_clean(await client.get("/v1/documents/search", params={"q": "\u0000"}), 422, "invalid")
            assert_clean(await client.post("/v1/tasks", json={**SCHEDULED, "prompt": "\u0000"}), 422, "invalid")
        assert seen == []
        # a backslash followed by "u0000" is text like any other
        sent = await client.post(messages, json={"message": "\\u0000 is how JSON writes NUL"})
        assert sent.status_code == 200, sent.text
        listed = (await client.get(messages)).json()["messages"]
        assert listed[0]["content"] == "\\u0000 is how JSON writes NUL"


async def test_bad_frames_on_the_chat_websocket_get_an_error_frame_and_the_socket_stays(start_platform: Start) -> None:
    platform = await start_platform()
    async with platform.client() as client:
        conversation_id = (await client.post("/v1/conversations", json={})).json()["id"]
        url = platform.url.replace("http", "ws") + f"/v1/conversations/{conversation_id}/ws"
        bad = (("[" * 10_000 + "]" * 10_000, "malformed"), ('{"message": "a\\u0000"}', "invalid"))
        async with websockets.connect(
            url, max_size=None, additional_headers={"Authorization": f"Bearer {platform.key}"}
        ) as socket:
            await socket.send(bad[0][0])  # answered only once the socket's own conversation lookup is done
            async with asyncio.timeout(10):
                assert json.loads(await socket.recv())["error"]["code"] == bad[0][1]
            async with bus_requests(platform) as seen:
                for frame, code in bad:
                    await socket.send(frame)
                    async with asyncio.timeout(10):
                        assert json.loads(await socket.recv())["error"]["code"] == code
                await platform.bus.nc.flush()
            assert seen == []  # neither became a command
            await socket.send(json.dumps({"message": "hello"}))
            async with asyncio.timeout(15):
                while json.loads(await socket.recv())["event"] != "completed":
                    pass


async def test_values_out_of_bounds_are_refused_by_the_gateway_and_never_reach_the_bus(start_platform: Start) -> None:
    platform = await start_platform(background=True)
    huge = "x" * 900_000
    async with platform.client() as client:
        task = await client.post("/v1/tasks", json=SCHEDULED)
        assert task.status_code == 201, task.text
        task_url = f"/v1/tasks/{task.json()['id']}"
        async with bus_requests(platform) as seen:
            for timezone in ("Europe/" + huge[:100], huge, "Mars/Olympus_Mons", "../../../etc/passwd"):
                assert_clean(await client.post("/v1/tasks", json={**SCHEDULED, "timezone": timezone}), 422, "invalid")
                assert_clean(await client.patch(task_url, json={"timezone": timezone}), 422, "invalid")
            email = {"channels": ["email"], "email_address": huge[:300_000] + "@example.com"}
            assert_clean(
                await client.post("/v1/tasks", json={**SCHEDULED, "notification_config": email}), 422, "invalid"
            )
            webhook = {"channels": ["webhook"], "webhook_url": "http://[::1"}
            assert_clean(
                await client.post("/v1/tasks", json={**SCHEDULED, "notification_config": webhook}), 422, "invalid"
            )
            assert_clean(await client.post("/v1/tasks", json={**SCHEDULED, "agent": huge}), 422, "invalid")
            assert_clean(await client.post("/v1/tasks", json={**SCHEDULED, "interval_seconds": 1e308}), 422, "invalid")
            assert_clean(await client.post("/v1/conversations", json={"agent": huge[:1000]}), 422, "invalid")
            assert_clean(await client.post("/v1/research", json={"question": "q", "agent": huge}), 422, "invalid")
            document = {"title": "t", "content": "a,b", "content_type": "text/csv"}
            assert_clean(await client.post("/v1/documents", json=document), 422, "invalid")
            upload = {"file": ("table.csv", b"a,b\n1,2\n", "text/csv")}
            assert_clean(await client.post("/v1/documents", files=upload), 422, "invalid")
            message = assert_clean(await client.post("/v1/conversations", json={"pattern": huge}), 422, "invalid")
            assert len(message["message"]) <= 500 and len(str(message["details"])) < 5_000
        assert seen == []
        assert (await client.get(task_url)).json()["timezone"] == "UTC"


async def test_unknown_agents_are_refused_at_creation_with_the_agents_that_exist(start_platform: Start) -> None:
    platform = await start_platform(background=True)
    async with platform.client() as client:
        task_id = (await client.post("/v1/tasks", json=SCHEDULED)).json()["id"]
        refused = [
            await client.post("/v1/conversations", json={"agent": "no-such-agent"}),
            await client.post("/v1/conversations", json={"agent": "pipeline:no-such-pipeline"}),
            await client.post("/v1/tasks", json={**SCHEDULED, "agent": "no-such-agent"}),
            await client.post("/v1/tasks", json={**SCHEDULED, "pipeline": "no-such-pipeline"}),
            await client.patch(f"/v1/tasks/{task_id}", json={"agent": "no-such-agent"}),
            await client.post("/v1/research", json={"question": "why?", "agent": "no-such-agent"}),
        ]
        for response in refused:
            error = assert_clean(response, 422, "unknown_agent")
            assert "assistant" in error["details"]["agents"]
            assert "researcher" not in error["details"]["agents"]  # an internal research agent: no chat may name it
            assert "text-analysis" in error["details"]["pipelines"]
        listed = (await client.get("/v1/tasks")).json()["tasks"]
        assert [(t["id"], t["agent"]) for t in listed] == [(task_id, "assistant")], listed
        # the agents that exist are taken, and listed
        created = await client.post("/v1/conversations", json={"agent": "summarizer"})
        assert created.status_code == 201 and created.json()["agent"] == "summarizer", created.text
        piped = await client.post("/v1/tasks", json={**SCHEDULED, "pipeline": "text-analysis"})
        assert piped.status_code == 201, piped.text
        patched = await client.patch(f"/v1/tasks/{task_id}", json={"agent": "summarizer"})
        assert patched.status_code == 200 and patched.json()["agent"] == "summarizer", patched.text
        catalog = (await client.get("/v1/agents")).json()
        assert {"assistant", "summarizer"} <= set(catalog["agents"]) and "researcher" not in catalog["agents"]
        assert catalog["pipelines"] == ["text-analysis"]


async def test_a_postgresql_outage_answers_503_with_retry_after(
    start_platform: Start, postgres: EmbeddedPostgres, database_url: str
) -> None:
    platform = await start_platform(background=True)
    admin = await asyncpg.connect(postgres.uri())
    names = [r["datname"] for r in await admin.fetch(r"SELECT datname FROM pg_database WHERE datname LIKE 't\_%'")]
    name = next(n for n in names if n in database_url)
    try:
        async with platform.client() as client:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
            response = await client.post("/v1/tasks", json={"task_type": "delegation", "prompt": "hi"})
            error = assert_clean(response, 503, "unavailable")
            assert int(response.headers["retry-after"]) > 0 and "scheduler" in error["message"]
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

            async def created() -> bool:
                again = await client.post("/v1/tasks", json={"task_type": "delegation", "prompt": "hi"})
                return again.status_code == 202

            deadline = asyncio.get_running_loop().time() + 20
            while not await created():
                assert asyncio.get_running_loop().time() < deadline, "the scheduler did not recover"
                await asyncio.sleep(0.5)
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()


async def test_a_turn_whose_model_raises_answers_without_the_exceptions_text(start_platform: Start) -> None:
    def broken(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        raise RuntimeError("secret token sk-123 in /usr/lib/python3/site-packages/provider.py")

    platform = await start_platform(FunctionModel(broken))
    async with platform.client() as client:
        conversation_id = (await client.post("/v1/conversations", json={})).json()["id"]
        response = await client.post(f"/v1/conversations/{conversation_id}/messages", json={"message": "hi"})
        assert response.status_code >= 500 and "sk-123" not in response.text, response.text
        error = assert_clean(response, response.status_code, response.json()["error"]["code"])
        run = await client.get(f"/v1/runs/{error['details']['run_id']}")
        assert run.json()["status"] == "failed"  # the reason stays in the run's record


async def test_a_malformed_url_is_a_fetch_error() -> None:
    for url in ("http://[::1", "http://example.com:port/", "http://[not-an-address]/"):
        with pytest.raises(FetchError):
            await fetch_text(url, allow=Allowlist.parse(""), max_bytes=1000, timeout_s=5)


def test_a_tasks_changeable_fields_are_its_fields_or_none() -> None:
    spec = {f.name: f.type for f in msgspec.structs.fields(TaskSpec)}
    for field in msgspec.structs.fields(TaskChangeFields):
        assert field.default is None and field.type == spec[field.name] | None, field.name
