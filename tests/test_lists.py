"""The lists of a tenant's things: GET /v1/conversations, /v1/runs and /v1/research, newest first, paged
with an opaque `after` cursor, filtered, refused with 422 for a bad value, and never another tenant's."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import httpx
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from tests.conftest import Platform, wait_until
from tests.models import prompts_of
from tests.test_bad_input import assert_clean, bus_requests

Start = Callable[..., Awaitable[Platform]]


async def _all_pages(client: httpx.AsyncClient, path: str, items: str, **params: Any) -> list[list[dict[str, Any]]]:
    """Every page of a list, following `next_after` until it is null."""
    pages: list[list[dict[str, Any]]] = []
    after: str | None = None
    while True:
        query = {**params, **({"after": after} if after else {})}
        response = await client.get(path, params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body[items])
        after = body["next_after"]
        if after is None:
            return pages
        assert len(pages) < 50, "the cursor does not advance"


def _at(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp)


def _flat(pages: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [item for page in pages for item in page]


def _failing_on_boom() -> FunctionModel:
    """Answers "ok", or fails its run when the prompt says "boom" (at length: "long boom")."""

    def reply(messages: list[ModelMessage]) -> str:
        prompt = prompts_of(messages)[-1]
        if "boom" in prompt:
            raise RuntimeError("the model fell over" + " and over" * 15_000 * ("long" in prompt))
        return "ok"

    def whole(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[TextPart(reply(messages))])

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        yield reply(messages)

    return FunctionModel(whole, stream_function=stream, model_name="boom")


async def test_conversations_are_listed_latest_activity_first_in_pages_and_only_the_tenants(
    start_platform: Start,
) -> None:
    platform = await start_platform()
    async with platform.client() as one, platform.client(await platform.key_for("t2")) as two:
        made = []
        for n in range(5):
            response = await one.post("/v1/conversations", json={"metadata": {"title": f"chat {n}"}})
            assert response.status_code == 201, response.text
            made.append(response.json()["id"])
        sidekick = (await one.post("/v1/conversations", json={"pattern": "sidekick"})).json()["id"]
        theirs = {(await two.post("/v1/conversations", json={})).json()["id"] for _ in range(2)}
        # a turn in the oldest one moves it to the top
        turn = await one.post(f"/v1/conversations/{made[0]}/messages", json={"message": "hello"})
        assert turn.status_code == 200, turn.text

        pages = await _all_pages(one, "/v1/conversations", "conversations", limit=2)
        listed = _flat(pages)
        sidekicks = (await one.get("/v1/conversations", params={"pattern": "sidekick"})).json()
        chatbots = _flat(await _all_pages(one, "/v1/conversations", "conversations", pattern="chatbot"))
        whole = (await one.get("/v1/conversations")).json()
        their_list = _flat(await _all_pages(two, "/v1/conversations", "conversations", limit=1))
        # a cursor names a place in the order, not a tenant: t2 paging with t1's cursor still sees only its own
        one_page = (await one.get("/v1/conversations", params={"limit": 2})).json()
        after_first = (await two.get("/v1/conversations", params={"after": one_page["next_after"]})).json()

    assert [len(p) for p in pages] == [2, 2, 2]
    ids = [c["conversation_id"] for c in listed]
    assert ids == [made[0], sidekick, *reversed(made[1:])]  # the turn's, then by creation, newest first
    assert len(set(ids)) == len(ids) and not set(ids) & theirs
    top = listed[0]
    assert top["title"] == "chat 0" and top["messages"] == 2 and top["agent"] == "assistant"
    assert _at(top["updated_at"]) > _at(top["created_at"]) and top["pattern"] == "chatbot"
    assert listed[1]["title"] is None and listed[1]["messages"] == 0
    assert set(top) >= {"conversation_id", "agent", "title", "created_at", "updated_at", "messages"}
    assert [c["conversation_id"] for c in sidekicks["conversations"]] == [sidekick]
    assert sidekicks["next_after"] is None
    assert {c["conversation_id"] for c in chatbots} == set(made)
    assert whole["next_after"] is None and len(whole["conversations"]) == 6  # the default limit holds all
    assert {c["conversation_id"] for c in their_list} == theirs
    assert {c["conversation_id"] for c in after_first["conversations"]} <= theirs


async def test_runs_are_listed_newest_first_with_their_total_usage_filtered_and_paged(start_platform: Start) -> None:
    platform = await start_platform(_failing_on_boom())
    async with platform.client() as one, platform.client(await platform.key_for("t2")) as two:
        first = (await one.post("/v1/conversations", json={})).json()["id"]
        second = (await one.post("/v1/conversations", json={})).json()["id"]
        run_ids = []
        for conversation, message in ((first, "a"), (second, "b"), (first, "c"), (second, "boom"), (first, "d")):
            response = await one.post(f"/v1/conversations/{conversation}/messages", json={"message": message})
            run_ids.append(response.json().get("run_id") or response.json()["error"]["details"]["run_id"])
        theirs = (await two.post("/v1/conversations", json={})).json()["id"]
        their_turn = await two.post(f"/v1/conversations/{theirs}/messages", json={"message": "mine"})
        their_run = their_turn.json()["run_id"]

        pages = await _all_pages(one, "/v1/runs", "runs", limit=2)
        single = (await one.get(f"/v1/runs/{run_ids[0]}")).json()
        of_first = _flat(await _all_pages(one, "/v1/runs", "runs", conversation_id=first, limit=2))
        failed = (await one.get("/v1/runs", params={"status": "failed"})).json()
        completed = _flat(await _all_pages(one, "/v1/runs", "runs", status="completed", limit=3))
        by_agent = (await one.get("/v1/runs", params={"agent": "assistant"})).json()
        nobody = (await one.get("/v1/runs", params={"agent": "nobody"})).json()
        foreign = (await one.get("/v1/runs", params={"conversation_id": theirs})).json()
        of_a_task = (await one.get("/v1/runs", params={"task_id": "no-such-task"})).json()
        under = (await one.get("/v1/runs", params={"parent_run_id": run_ids[0]})).json()
        their_list = (await two.get("/v1/runs")).json()
        # runs whose error text is 135 KB each: a page stops short of 512 KiB
        third = (await one.post("/v1/conversations", json={})).json()["id"]
        long_ones = []
        for _ in range(4):
            response = await one.post(f"/v1/conversations/{third}/messages", json={"message": "long boom"})
            long_ones.append(response.json()["error"]["details"]["run_id"])
        failed_pages = await _all_pages(one, "/v1/runs", "runs", status="failed", limit=5)

    listed = _flat(pages)
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [r["id"] for r in listed] == list(reversed(run_ids))
    assert [_at(r["created_at"]) for r in listed] == sorted((_at(r["created_at"]) for r in listed), reverse=True)
    # each is the view GET /v1/runs/{id} answers
    assert next(r for r in listed if r["id"] == run_ids[0]) == single
    assert single["total_usage"]["requests"] == 1 and single["conversation_id"] == first
    assert [r["id"] for r in of_first] == [run_ids[4], run_ids[2], run_ids[0]]
    assert [r["id"] for r in failed["runs"]] == [run_ids[3]] and failed["next_after"] is None
    assert failed["runs"][0]["status"] == "failed" and failed["runs"][0]["error"]
    assert {r["id"] for r in completed} == set(run_ids) - {run_ids[3]}
    assert len(by_agent["runs"]) == 5 and nobody == {"runs": [], "next_after": None}
    assert foreign["runs"] == [] and of_a_task["runs"] == [] and under["runs"] == []
    assert [r["id"] for r in their_list["runs"]] == [their_run]
    assert [[r["id"] for r in page] for page in failed_pages] == [long_ones[:0:-1], [long_ones[0], run_ids[3]]]
    assert len(failed_pages[0][0]["error"]) > 135_000


async def test_a_bad_list_query_is_a_422_and_reaches_no_actor(start_platform: Start) -> None:
    platform = await start_platform()
    bad: list[tuple[str, dict[str, str]]] = [
        ("/v1/conversations", {"limit": "0"}),
        ("/v1/conversations", {"limit": "201"}),
        ("/v1/conversations", {"limit": "many"}),
        ("/v1/conversations", {"pattern": "gossip"}),
        ("/v1/conversations", {"after": "not a cursor!"}),
        ("/v1/conversations", {"after": "bm90IGpzb24"}),  # base64 of "not json"
        ("/v1/runs", {"status": "sleeping"}),
        ("/v1/runs", {"agent": "no spaces allowed"}),
        ("/v1/runs", {"after": "WzEsIiJd"}),  # [1, ""]: no id
        ("/v1/runs", {"after": "WzEsIlx1MDAwMCJd"}),  # [1, "\u0000"]
        ("/v1/runs", {"after": "Wzk5OTk5OTk5OTk5OTk5OTk5OTksImEiXQ"}),  # a time past any calendar
        ("/v1/runs", {"task_id": ""}),
        ("/v1/runs", {"limit": "-1"}),
        ("/v1/research", {"status": "thinking"}),
        ("/v1/research", {"after": "x" * 401}),
    ]
    async with platform.client() as client:
        async with bus_requests(platform) as seen:
            for path, params in bad:
                error = assert_clean(await client.get(path, params=params), 422, "invalid")
                assert error["message"], (path, params)
        assert seen == []
        # a cursor a page gave is taken back
        for _ in range(3):
            await client.post("/v1/conversations", json={})
        page = (await client.get("/v1/conversations", params={"limit": 2})).json()
        rest = await client.get("/v1/conversations", params={"limit": 2, "after": page["next_after"]})
        first = await client.get("/v1/conversations", params={"limit": 2, "after": ""})  # empty: the first page
    assert rest.status_code == 200 and len(rest.json()["conversations"]) == 1
    assert first.json() == page


class Researchers:
    """Plans one sub-question, answers it, writes a short report; a question saying "hold" waits at its plan."""

    def __init__(self) -> None:
        self.held = asyncio.Event()

    async def stream(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        instructions = info.instructions or ""
        prompt = " ".join(prompts_of(messages))
        if "You plan research" in instructions:
            if "hold" in prompt:
                self.held.set()
                await asyncio.Event().wait()  # until the job is cancelled
            args = json.dumps({"sub_questions": [{"question": "What is it?", "why": "to know"}]})
            yield {0: DeltaToolCall(name=info.output_tools[0].name, json_args=args, tool_call_id="plan")}
        elif "You write a research report" in instructions:
            yield "# Report\n\n" + ("It is long. " * 12_000 if "long" in prompt else "It is what it is.")
        else:
            yield "It is a thing."

    def model(self) -> FunctionModel:
        def whole(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:  # a task's run, not streamed
            return ModelResponse(parts=[TextPart("done")])

        return FunctionModel(whole, stream_function=self.stream, model_name="researchers")


async def _ended(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = {}

    async def ended() -> bool:
        nonlocal job
        job = (await client.get(f"/v1/research/{job_id}")).json()
        return job.get("finished_at") is not None

    await wait_until(ended, timeout=30, what=f"research job {job_id} to end")
    return job


async def test_research_jobs_and_their_sub_runs_and_task_runs_are_listed(start_platform: Start) -> None:
    model = Researchers()
    platform = await start_platform(model.model(), background=True)
    spec = {"max_subtasks": 1, "max_depth": 1}
    async with platform.client() as one, platform.client(await platform.key_for("t2")) as two:
        jobs = []
        for question in ("first question", "second question", "third question"):
            response = await one.post("/v1/research", json={**spec, "question": question})
            assert response.status_code == 202, response.text
            jobs.append(response.json()["id"])
            await _ended(one, jobs[-1])
        held = (await one.post("/v1/research", json={**spec, "question": "hold this one"})).json()["id"]
        await asyncio.wait_for(model.held.wait(), 15)
        running = (await one.get("/v1/research", params={"status": "planning"})).json()
        assert (await one.post(f"/v1/research/{held}/cancel")).status_code == 202
        cancelled = await _ended(one, held)
        theirs = []
        for question in ("their question", "a long one", "another long one"):  # reports of 144 KB
            theirs.append((await two.post("/v1/research", json={**spec, "question": question})).json()["id"])
            await _ended(two, theirs[-1])
        # a delegated task's run names the task
        task = (await one.post("/v1/tasks", json={"task_type": "delegation", "prompt": "do it"})).json()

        async def task_ran() -> bool:
            listed = (await one.get("/v1/runs", params={"task_id": task["id"]})).json()["runs"]
            return bool(listed) and listed[0]["status"] == "completed"

        await wait_until(task_ran, timeout=30, what="the task's run")

        pages = await _all_pages(one, "/v1/research", "jobs", limit=2)
        single = (await one.get(f"/v1/research/{jobs[0]}")).json()
        completed = _flat(await _all_pages(one, "/v1/research", "jobs", status="completed", limit=2))
        only_cancelled = (await one.get("/v1/research", params={"status": "cancelled"})).json()
        their_pages = await _all_pages(two, "/v1/research", "jobs", limit=3)
        sub_runs = _flat(await _all_pages(one, "/v1/runs", "runs", parent_run_id=jobs[1], limit=2))
        writers = (await one.get("/v1/runs", params={"agent": "research-writer"})).json()
        task_runs = (await one.get("/v1/runs", params={"task_id": task["id"]})).json()
        foreign_sub_runs = (await two.get("/v1/runs", params={"parent_run_id": jobs[1]})).json()
        task_conversations = (await one.get("/v1/conversations", params={"pattern": "task"})).json()

    assert [len(p) for p in pages] == [2, 2]
    assert [j["id"] for j in _flat(pages)] == [held, *reversed(jobs)]
    assert next(j for j in _flat(pages) if j["id"] == jobs[0]) == single  # the view GET /v1/research/{id} answers
    assert single["status"] == "completed" and single["report"] and len(single["subruns"]) == 3
    assert [j["id"] for j in running["jobs"]] == [held]
    assert cancelled["status"] == "cancelled"
    assert [j["id"] for j in completed] == list(reversed(jobs))
    assert [j["id"] for j in only_cancelled["jobs"]] == [held]
    # a page stops short once its jobs hold 512 KiB (each long job's report is in it twice: as the writer's output)
    assert [[j["id"] for j in page] for page in their_pages] == [[theirs[2]], [theirs[1], theirs[0]]]
    assert len(their_pages[0][0]["report"]) > 140_000
    assert {r["id"] for r in sub_runs} == {f"{jobs[1]}-plan", f"{jobs[1]}-q1-1", f"{jobs[1]}-report"}
    assert all(r["parent_run_id"] == jobs[1] for r in sub_runs)
    assert [r["id"] for r in writers["runs"]] == [f"{j}-report" for j in reversed(jobs)]
    (task_run,) = task_runs["runs"]
    assert task_run["task_id"] == task["id"] and task_run["total_usage"]["requests"] == 1
    assert foreign_sub_runs["runs"] == []
    (task_conversation,) = task_conversations["conversations"]  # a task run's own conversation
    assert task_conversation["conversation_id"] == task["last_runs"][0]["id"] == task_run["conversation_id"]
    assert task_conversation["messages"] == 2
