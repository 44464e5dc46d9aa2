"""Approvals over HTTP, gateway and executor in-process: a chat turn whose model calls a tool that needs
approval parks; the call is listed, decided (approve, deny with a reason, edit its arguments), and the turn
goes on from where it parked. Another tenant sees nothing of it; every decision is in the audit trail."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from bus import keys
from tests.conftest import Platform, wait_until
from tests.test_cli_client import Agentbus, printed_json
from tests.test_gateway_errors import assert_error

Start = Callable[..., Awaitable[Platform]]

AGENTS = """
[agents.mailer]
tools = ["python:tests.approval_tools:send_email"]
requires_approval = ["send_email"]
"""
ASKED = {"to": "ada@example.com", "subject": "the invoice"}


class Mailer:
    """A model that asks to send one email, then answers with what came back for the call (the tool's
    result, or the denial the model is given instead)."""

    def __init__(self) -> None:
        self.seen: list[str] = []  # what each call's answer said, as the model read it

    def _answered(self, messages: list[ModelMessage]) -> str | None:
        last = messages[-1]
        if isinstance(last, ModelRequest):
            for part in last.parts:
                if isinstance(part, ToolReturnPart) and part.tool_name == "send_email":
                    return part.model_response_str()
                if isinstance(part, RetryPromptPart) and part.tool_name == "send_email":
                    return part.model_response()
        return None

    def _whole(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        said = self._answered(messages)
        if said is None:
            return ModelResponse(parts=[ToolCallPart("send_email", dict(ASKED), tool_call_id=f"call-{len(messages)}")])
        self.seen.append(said)
        return ModelResponse(parts=[TextPart(f"the tool said: {said}")])

    async def _stream(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        said = self._answered(messages)
        if said is None:
            yield {
                0: DeltaToolCall(name="send_email", json_args=json.dumps(ASKED), tool_call_id=f"call-{len(messages)}")
            }
            return
        self.seen.append(said)
        yield f"the tool said: {said}"

    def model(self) -> FunctionModel:
        return FunctionModel(self._whole, stream_function=self._stream, model_name="mailer")


async def _platform(start_platform: Start, tmp_path: Path, mailer: Mailer) -> Platform:
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS)
    return await start_platform(mailer.model(), agents_file=agents)


async def _key_id(platform: Platform) -> str:
    [found] = [s.id for s in await keys.list_keys(platform.bus, "t1") if s.record.name == "test"]
    return found


async def _streamed_turn(client: httpx.AsyncClient, message: str = "mail ada the invoice") -> list[dict[str, Any]]:
    """A chat turn of the mailer, streamed: every event through the last."""
    conversation_id = (await client.post("/v1/conversations", json={"agent": "mailer"})).json()["id"]
    events: list[dict[str, Any]] = []
    url = f"/v1/conversations/{conversation_id}/messages"
    async with aconnect_sse(client, "POST", url, json={"message": message, "stream": True}) as source:
        assert source.response.status_code == 200, await source.response.aread()
        async for sse in source.aiter_sse():
            events.append({"id": int(sse.id), "event": sse.event, "data": json.loads(sse.data)})
    return events


async def _pending(client: httpx.AsyncClient) -> dict[str, Any]:
    """The one approval waiting, once the run has parked."""
    listed: list[dict[str, Any]] = []

    async def parked() -> bool:
        listed[:] = (await client.get("/v1/approvals")).json()["approvals"]
        return bool(listed)

    await wait_until(parked, timeout=30, what="the run to park on its approval")
    [approval] = listed
    return approval


async def test_an_approved_call_runs_once_and_the_turn_completes(start_platform: Start, tmp_path: Path) -> None:
    mailer = Mailer()
    platform = await _platform(start_platform, tmp_path, mailer)
    key_id = await _key_id(platform)
    async with platform.client() as client:
        turn = asyncio.create_task(_streamed_turn(client))
        approval = await _pending(client)
        # bound to exactly that call: its tool, its arguments as the model wrote them and their hash, its run
        assert approval["tool_name"] == "send_email" and json.loads(approval["args"]) == ASKED
        assert approval["args_sha256"] == hashlib.sha256(approval["args"].encode()).hexdigest()
        assert approval["status"] == "pending" and approval["agent"] == "mailer" and approval["decided_by"] is None
        assert approval["tenant"] == "t1" and approval["conversation_id"]
        assert (await client.get(f"/v1/approvals/{approval['id']}")).json() == approval
        assert (await client.get(f"/v1/runs/{approval['run_id']}")).json()["status"] == "waiting"
        listed = (await client.get("/v1/approvals", params={"run_id": approval["run_id"]})).json()["approvals"]
        assert [a["id"] for a in listed] == [approval["id"]]
        assert not mailer.seen  # nothing ran while it waited

        url = f"/v1/approvals/{approval['id']}"
        decided = await client.post(url, json={"decision": "approve"}, headers={"Idempotency-Key": "approve-1"})
        assert decided.status_code == 200, decided.text
        record = decided.json()
        assert record["status"] == "approved" and record["decided_by"] == key_id and record["decided_at"]
        assert record["args"] == approval["args"] and record["edited_args"] is None
        again = await client.post(url, json={"decision": "approve"}, headers={"Idempotency-Key": "approve-1"})
        assert again.status_code == 200 and again.json() == record and again.headers["idempotent-replayed"] == "true"
        assert_error(await client.post(url, json={"decision": "deny", "reason": "too late"}), 409, "conflict")

        events = await asyncio.wait_for(turn, 60)
        kinds = [e["event"] for e in events]
        assert "waiting" in kinds and kinds[-1] == "completed", kinds
        assert kinds.index("waiting") < kinds.index("approval_decided") < kinds.index("completed")
        waiting = events[kinds.index("waiting")]["data"]
        assert [a["id"] for a in waiting["approvals"]] == [approval["id"]]
        assert mailer.seen == ["sent to ada@example.com: the invoice"]  # the tool ran, once, with what was shown
        assert events[-1]["data"]["output"] == "the tool said: sent to ada@example.com: the invoice"
        assert (await client.get(f"/v1/runs/{approval['run_id']}")).json()["status"] == "completed"
        assert (await client.get("/v1/approvals")).json()["approvals"] == []
        done = (await client.get("/v1/approvals", params={"status": "approved"})).json()["approvals"]
        assert [a["id"] for a in done] == [approval["id"]]
        assert [a["id"] for a in (await client.get("/v1/approvals?status=all")).json()["approvals"]] == [approval["id"]]

        audited: list[dict[str, Any]] = []

        async def in_the_audit_trail() -> bool:
            events = (await client.get("/v1/audit")).json()["events"]
            audited[:] = [e for e in events if e["action"] == "decided"]
            return bool(audited)

        await wait_until(in_the_audit_trail, what="the decision in the audit trail")
        entry = audited[0]  # the replayed answer is audited too: the first is the decision
        assert entry["key_id"] == key_id and entry["target"] == approval["id"] and entry["status"] == 200
        assert entry["detail"] == {
            "run_id": approval["run_id"],
            "tool": "send_email",
            "args_sha256": approval["args_sha256"],
            "status": "approved",
        }


async def test_a_denial_gives_the_model_the_reason_and_another_tenant_sees_nothing(
    start_platform: Start, tmp_path: Path
) -> None:
    mailer = Mailer()
    platform = await _platform(start_platform, tmp_path, mailer)
    other = await platform.key_for("t2")
    async with platform.client() as client, platform.client(key=other) as stranger:
        turn = asyncio.create_task(_streamed_turn(client))
        approval = await _pending(client)
        url = f"/v1/approvals/{approval['id']}"
        assert (await stranger.get("/v1/approvals", params={"status": "all"})).json()["approvals"] == []
        assert_error(await stranger.get(url), 404, "not_found")
        assert_error(await stranger.post(url, json={"decision": "approve"}), 404, "not_found")
        assert (await client.get(url)).json()["status"] == "pending"  # the stranger decided nothing

        reason = "Ada has already been sent this invoice; do not send it twice."
        decided = await client.post(url, json={"decision": "deny", "reason": reason})
        assert decided.status_code == 200, decided.text
        assert decided.json()["status"] == "denied" and decided.json()["reason"] == reason
        events = await asyncio.wait_for(turn, 60)
    assert events[-1]["event"] == "completed", [e["event"] for e in events]
    [seen] = mailer.seen
    assert reason in seen and "sent to" not in seen  # the model read the reason; the tool never ran


async def test_a_turn_sent_without_stream_that_parks_answers_202_with_its_approvals(
    start_platform: Start, tmp_path: Path
) -> None:
    """Not a 504 once the reply timeout has passed: the answer says at once that the turn waits, and for what;
    the reply is stored in the conversation once the call is decided."""
    mailer = Mailer()
    platform = await _platform(start_platform, tmp_path, mailer)
    async with platform.client() as client:
        conversation_id = (await client.post("/v1/conversations", json={"agent": "mailer"})).json()["id"]
        url = f"/v1/conversations/{conversation_id}/messages"
        headers = {"Idempotency-Key": "parked-turn"}
        answer = await client.post(url, json={"message": "mail ada the invoice"}, headers=headers)
        assert answer.status_code == 202, answer.text
        body = answer.json()
        assert body["status"] == "waiting" and body["waits"] == []
        [approval] = body["approvals"]
        assert approval["tool_name"] == "send_email" and json.loads(approval["args"]) == ASKED
        assert answer.headers["location"] == f"/v1/runs/{body['run_id']}" and approval["run_id"] == body["run_id"]
        assert (await client.get(answer.headers["location"])).json()["status"] == "waiting"
        again = await client.post(url, json={"message": "mail ada the invoice"}, headers=headers)
        assert again.status_code == 202 and again.json() == body  # the same answer, and no second turn
        assert [a["id"] for a in (await client.get("/v1/approvals")).json()["approvals"]] == [approval["id"]]

        decided = await client.post(f"/v1/approvals/{approval['id']}", json={"decision": "approve"})
        assert decided.status_code == 200, decided.text
        replies: list[dict[str, Any]] = []

        async def replied() -> bool:
            messages = (await client.get(url)).json()["messages"]
            replies[:] = [m for m in messages if m["role"] == "assistant"]
            return bool(replies)

        await wait_until(replied, timeout=30, what="the reply stored once the call was approved")
    assert replies[-1]["content"] == "the tool said: sent to ada@example.com: the invoice"
    assert mailer.seen == ["sent to ada@example.com: the invoice"]


async def test_an_edit_runs_the_tool_with_the_new_arguments_and_says_so(start_platform: Start, tmp_path: Path) -> None:
    mailer = Mailer()
    platform = await _platform(start_platform, tmp_path, mailer)
    async with platform.client() as client:
        turn = asyncio.create_task(_streamed_turn(client))
        approval = await _pending(client)
        url = f"/v1/approvals/{approval['id']}"
        assert_error(await client.post(url, json={"decision": "edit"}), 422, "invalid")  # edit, but to what?
        assert_error(await client.post(url, json={"decision": "approve", "arguments": {}}), 422, "invalid")
        assert_error(await client.post(url, json={"decision": "maybe"}), 422, "invalid")
        assert_error(await client.post(url, json={"decision": "deny", "reason": "x" * 2001}), 422, "invalid")
        assert_error(await client.post(url, json={"decision": "deny", "by": "someone else"}), 422, "invalid")
        assert_error(await client.post(url, content=b"not json"), 400, "malformed")
        assert (await client.get(url)).json()["status"] == "pending"  # none of those decided anything

        edited = {"to": "billing@example.com", "subject": "the invoice"}
        decided = await client.post(url, json={"decision": "edit", "arguments": edited, "reason": "billing pays"})
        assert decided.status_code == 200, decided.text
        record = decided.json()
        assert record["status"] == "edited" and json.loads(record["edited_args"]) == edited
        assert record["args"] == approval["args"]  # what was shown stays as it was
        events = await asyncio.wait_for(turn, 60)
    assert events[-1]["event"] == "completed"
    assert mailer.seen == ["sent to billing@example.com: the invoice"]


async def test_unknown_approvals_answer_404_and_a_bad_filter_422(start_platform: Start, tmp_path: Path) -> None:
    platform = await _platform(start_platform, tmp_path, Mailer())
    async with platform.client() as client:
        assert_error(await client.get("/v1/approvals/apr_nothing"), 404, "not_found")
        assert_error(await client.post("/v1/approvals/apr_nothing", json={"decision": "approve"}), 404, "not_found")
        assert_error(await client.post("/v1/approvals/a.b", json={"decision": "approve"}), 404, "not_found")
        assert_error(await client.get("/v1/approvals", params={"status": "maybe"}), 422, "invalid")
        assert (await client.get("/v1/approvals", params={"status": "all"})).json() == {"approvals": []}


@pytest.fixture
def agentbus(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Agentbus:
    return Agentbus(capsys, monkeypatch)


async def test_the_terminal_chat_shows_the_waiting_call_and_agentbus_deny_decides_it(
    start_platform: Start, tmp_path: Path, agentbus: Agentbus
) -> None:
    mailer = Mailer()
    platform = await _platform(start_platform, tmp_path, mailer)
    agentbus.target(platform.url, platform.key, tmp_path)
    chatting = agentbus.start("chat", "--agent", "mailer", stdin="mail ada the invoice\n")
    await wait_until(lambda: _said(agentbus, "agentbus approve "), timeout=30, what="the chat to show the approval")
    shown = agentbus.output()
    assert "⏸ send_email" in shown and '"to":"ada@example.com"' in shown.replace(" ", "")
    approval_id = shown.split("agentbus approve ", 1)[1].split()[0]

    listed = await agentbus("approvals")
    assert listed.code == 0 and approval_id in listed.out and "send_email" in listed.out and "pending" in listed.out
    denied = await agentbus("deny", approval_id, "--reason", "not this week")
    assert denied.code == 0, denied.err
    assert f"{approval_id} denied" in denied.out
    assert await asyncio.wait_for(chatting, 60) == 0
    assert "the tool said:" in agentbus.output() and "not this week" in agentbus.out
    again = await agentbus("approve", approval_id)
    assert again.code == 1 and "error: conflict:" in again.err
    everything = await agentbus("approvals", "--all", "--json")
    assert [(a["id"], a["status"]) for a in printed_json(everything.out)["approvals"]] == [(approval_id, "denied")]


async def _said(agentbus: Agentbus, text: str) -> bool:
    return text in agentbus.output()
