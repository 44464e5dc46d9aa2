"""The HTTP and WebSocket API end to end: gateway → NATS → conversation → executor → back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import websockets
from httpx_sse import aconnect_sse
from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel

from bus import subjects
from bus.headers import Trace, new_id
from schemas.runs import RunRequest
from tests.conftest import Platform, wait_until
from tests.models import Gate, replying

Start = Callable[..., Awaitable[Platform]]


async def new_conversation(client: httpx.AsyncClient, **body: Any) -> str:
    response = await client.post("/v1/conversations", json=body)
    assert response.status_code == 201, response.text
    conversation_id: str = response.json()["id"]
    return conversation_id


async def sse_events(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with aconnect_sse(client, method, url, **kwargs) as source:
        assert source.response.status_code == 200
        async for sse in source.aiter_sse():
            events.append({"id": int(sse.id), "event": sse.event, "data": json.loads(sse.data)})
    return events


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["data"]["text"] for e in events if e["event"] == "delta")


async def test_a_chat_turn_over_http(start_platform: Start) -> None:
    platform = await start_platform(TestModel(custom_output_text="Hello there!", call_tools=[]))
    async with platform.client() as client:
        conversation_id = await new_conversation(client)
        response = await client.post(f"/v1/conversations/{conversation_id}/messages", json={"message": "Hi"})
        assert response.status_code == 200, response.text
        reply = response.json()
        assert reply["message"]["content"] == "Hello there!" and reply["message"]["role"] == "assistant"
        assert reply["model"] == "test" and reply["offline"] is False
        listed = (await client.get(f"/v1/conversations/{conversation_id}/messages")).json()["messages"]
        assert [(m["role"], m["content"]) for m in listed] == [("user", "Hi"), ("assistant", "Hello there!")]
        run = (await client.get(f"/v1/runs/{reply['run_id']}")).json()
        assert run["status"] == "completed" and run["usage"]["output_tokens"] > 0
        conversation = (await client.get(f"/v1/conversations/{conversation_id}")).json()
        assert conversation["pattern"] == "chatbot" and conversation["policy"] == "enqueue"


async def test_a_chat_turn_over_the_websocket(start_platform: Start) -> None:
    platform = await start_platform(TestModel(custom_output_text="over the socket", call_tools=[]))
    async with platform.client() as client:
        conversation_id = await new_conversation(client)
    url = platform.url.replace("http", "ws") + f"/v1/conversations/{conversation_id}/ws"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {platform.key}"}) as socket:
        await socket.send(json.dumps({"message": "hello"}))
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(15):
            while not events or events[-1]["event"] not in ("completed", "failed", "cancelled"):
                events.append(json.loads(await socket.recv()))
    assert events[0]["event"] == "accepted" and events[-1]["event"] == "completed"
    assert text_of(events) == "over the socket" and events[-1]["data"]["output"] == "over the socket"
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)


async def test_websocket_without_a_key_is_refused(start_platform: Start) -> None:
    platform = await start_platform()
    url = platform.url.replace("http", "ws") + "/v1/conversations/x/ws"
    async with websockets.connect(url) as socket:
        first = json.loads(await socket.recv())
        assert first["error"]["code"] == "unauthorized"
        async with asyncio.timeout(5):
            await socket.wait_closed()
        assert socket.close_code == 4401


async def test_streaming_delivers_every_token_in_order(start_platform: Start) -> None:
    tokens = [f"t{i} " for i in range(60)]

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        for token in tokens:
            await asyncio.sleep(0.002)
            yield token

    platform = await start_platform(FunctionModel(stream_function=stream))
    async with platform.client() as client:
        conversation_id = await new_conversation(client)
        url = f"/v1/conversations/{conversation_id}/messages"
        events = await sse_events(client, "POST", url, json={"message": "count", "stream": True})
    assert [e["event"] for e in events][:2] == ["accepted", "started"] and events[-1]["event"] == "completed"
    assert text_of(events) == "".join(tokens)
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_reconnecting_with_last_event_id_resumes_exactly_after_it(start_platform: Start) -> None:
    gate = Gate([f"a{i} " for i in range(5)], [f"b{i} " for i in range(5)])
    platform = await start_platform(gate.model())
    async with platform.client() as client:
        conversation_id = await new_conversation(client)
        seen: list[dict[str, Any]] = []
        url = f"/v1/conversations/{conversation_id}/messages"
        async with aconnect_sse(client, "POST", url, json={"message": "go", "stream": True}) as source:
            async for sse in source.aiter_sse():
                seen.append({"id": int(sse.id), "event": sse.event, "data": json.loads(sse.data)})
                if gate.reached.is_set() and text_of(seen) == "".join(gate.before):
                    break  # the client goes away mid-run
        run_id = seen[0]["data"]["run_id"]
        gate.opened.set()  # the run goes on while nobody listens
        rest = await sse_events(
            client, "GET", f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": str(seen[-1]["id"])}
        )
        everything = await sse_events(client, "GET", f"/v1/runs/{run_id}/events")
    assert seen + rest == everything
    assert text_of(everything) == "".join(gate.before + gate.after) and rest[-1]["event"] == "completed"


async def test_sidekick_turn_sees_the_latest_pushed_context(start_platform: Start) -> None:
    instructions: list[str] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> str:
        instructions.append(info.instructions or "")
        return "seen"

    platform = await start_platform(replying(model))
    async with platform.client() as client:
        conversation_id = await new_conversation(client, pattern="sidekick", context={"page": "home"})
        put = await client.put(f"/v1/conversations/{conversation_id}/context", json={"context": {"invoice": 42}})
        assert put.status_code == 200 and put.json()["context"] == {"invoice": 42}
        response = await client.post(f"/v1/conversations/{conversation_id}/messages", json={"message": "check it"})
        assert response.status_code == 200
    assert '"invoice": 42' in instructions[-1] and '"home"' not in instructions[-1]


async def test_reject_policy_answers_409_while_a_turn_runs(start_platform: Start) -> None:
    gate = Gate(["busy "], ["done"])
    platform = await start_platform(gate.model())
    async with platform.client() as client:
        conversation_id = await new_conversation(client, policy="reject")
        url = f"/v1/conversations/{conversation_id}/messages"
        first = asyncio.create_task(client.post(url, json={"message": "one"}))
        async with asyncio.timeout(10):
            await gate.reached.wait()
        second = await client.post(url, json={"message": "two"})
        assert second.status_code == 409 and second.json()["error"]["code"] == "conflict"
        streamed = await client.post(url, json={"message": "three", "stream": True})
        assert streamed.status_code == 409
        gate.opened.set()
        assert (await first).status_code == 200


async def test_cancel_stops_a_run_and_it_is_recorded_as_cancelled(start_platform: Start) -> None:
    gate = Gate(["partial "], ["never"])
    platform = await start_platform(gate.model())
    async with platform.client() as client:
        conversation_id = await new_conversation(client)
        url = f"/v1/conversations/{conversation_id}/messages"
        pending = asyncio.create_task(client.post(url, json={"message": "long job"}))
        async with asyncio.timeout(10):
            await gate.reached.wait()
        listed = (await client.get(f"/v1/conversations/{conversation_id}")).json()
        run_id = listed["active_run_id"]
        cancelled = await client.post(f"/v1/runs/{run_id}/cancel")
        assert cancelled.status_code == 202
        answer = await pending
        assert answer.status_code == 409 and answer.json()["error"]["details"]["run_id"] == run_id
        events = await sse_events(client, "GET", f"/v1/runs/{run_id}/events")
        assert events[-1]["event"] == "cancelled"
        assert (await client.get(f"/v1/runs/{run_id}")).json()["status"] == "cancelled"


async def test_continue_makes_a_new_conversation_with_the_history(start_platform: Start) -> None:
    platform = await start_platform(TestModel(custom_output_text="noted", call_tools=[]))
    async with platform.client() as client:
        conversation_id = await new_conversation(client)
        await client.post(f"/v1/conversations/{conversation_id}/messages", json={"message": "remember 7"})
        response = await client.post(f"/v1/conversations/{conversation_id}/continue")
        assert response.status_code == 201
        child = response.json()
        assert child["parent_id"] == conversation_id and child["id"] != conversation_id
        listed = (await client.get(f"/v1/conversations/{child['id']}/messages")).json()["messages"]
        assert [m["content"] for m in listed] == ["remember 7", "noted"]


async def test_a_runs_tree_nests_its_sub_runs(start_platform: Start) -> None:
    platform = await start_platform(TestModel(custom_output_text="ok", call_tools=[]))
    async with platform.client() as client:
        conversation_id = await new_conversation(client)
        root = (await client.post(f"/v1/conversations/{conversation_id}/messages", json={"message": "plan"})).json()
        child = new_id()
        request = RunRequest(run_id=child, agent="assistant", prompt="sub-question", parent_run_id=root["run_id"])
        await platform.bus.publish(subjects.executor_command("t1", child), request, trace=Trace(tenant="t1"))

        async def child_done() -> bool:  # published straight on the bus: 404 until the executor has it
            response = await client.get(f"/v1/runs/{child}")
            return response.status_code == 200 and response.json()["status"] == "completed"

        await wait_until(child_done, what="the sub-run")
        tree = (await client.get(f"/v1/runs/{root['run_id']}/tree")).json()
    assert tree["id"] == root["run_id"] and tree["conversation_id"] == conversation_id
    assert [(c["id"], c["parent_run_id"], c["children"]) for c in tree["children"]] == [(child, root["run_id"], [])]


async def test_when_a_stream_ends_its_reply_is_stored(start_platform: Start, database_url: str) -> None:
    """Read-your-writes: a client that reloads the history when the stream ends sees the reply. The
    conversation's row is held locked while the run finishes, so storing the reply waits; the stream
    (SSE, then the WebSocket) must not end before it is stored."""
    platform = await start_platform(FunctionModel(stream_function=_slow_words))
    async with platform.client() as client:
        conversation_id = await new_conversation(client)
        url = f"/v1/conversations/{conversation_id}/messages"
        ws_url = platform.url.replace("http", "ws") + f"/v1/conversations/{conversation_id}/ws"

        async def hold_the_conversation() -> None:
            db = await asyncpg.connect(database_url)
            try:
                async with db.transaction():
                    await db.execute(
                        "SELECT 1 FROM conversation.conversations WHERE id = $1 FOR UPDATE", conversation_id
                    )
                    await asyncio.sleep(1.0)  # the run ends meanwhile; its turn cannot be stored yet
            finally:
                await db.close()

        async def sse_turn() -> None:
            holding: asyncio.Task[None] | None = None
            async with aconnect_sse(client, "POST", url, json={"message": "one", "stream": True}) as source:
                async for sse in source.aiter_sse():
                    if sse.event == "started":
                        holding = asyncio.create_task(hold_the_conversation())
            listed = (await client.get(url)).json()["messages"]  # reloaded right after the stream's end
            assert [m["role"] for m in listed] == ["user", "assistant"], listed
            assert holding is not None
            await holding

        async def ws_turn() -> None:
            async with websockets.connect(
                ws_url, additional_headers={"Authorization": f"Bearer {platform.key}"}
            ) as socket:
                await socket.send(json.dumps({"message": "two"}))
                holding: asyncio.Task[None] | None = None
                async with asyncio.timeout(15):
                    while True:
                        event = json.loads(await socket.recv())
                        if event["event"] == "started":
                            holding = asyncio.create_task(hold_the_conversation())
                        if event["event"] in ("completed", "failed", "cancelled"):
                            break
            listed = (await client.get(url)).json()["messages"]
            assert [m["role"] for m in listed] == ["user", "assistant"] * 2, listed
            assert holding is not None
            await holding

        await sse_turn()
        await ws_turn()


async def _slow_words(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
    for word in ("stored ", "before ", "the ", "end"):
        await asyncio.sleep(0.05)
        yield word
