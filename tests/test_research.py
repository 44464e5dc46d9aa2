"""Research jobs over HTTP: a cited report over ingested documents and a local web page, budgets that
stop a job with a partial report, cancel, and kill -9 of the research actor mid-job."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import uvicorn
from pydantic_ai.messages import ModelMessage, ModelRequest, ToolReturnPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from actors._outbound import Allowlist
from actors.research.actor import ResearchActor
from actors.research.config import ResearchConfig
from bus import subjects
from bus.config import BusConfig
from bus.embedded import free_port
from bus.headers import Header, Trace
from bus.streams import DLQ
from schemas.research import StartResearch
from schemas.tools import UNTRUSTED_KEY
from tests.conftest import Platform, running, wait_until
from tests.receivers import HttpReceiver, verify_standard_webhook

Start = Callable[..., Awaitable[Platform]]
DOCUMENTS = {
    "Solar power": "Solar panels turn sunlight into electricity. Panel efficiency reached 23 percent in 2024.",
    "Wind power": "Wind turbines turn moving air into electricity. Offshore wind farms have larger turbines.",
    "Hydro power": "Hydroelectric dams store water and release it through turbines. Dams also help with floods.",
}
PLAN = [
    {"question": "How does solar power work?", "why": "one of the sources"},
    {"question": "How does wind power work?", "why": "another source"},
    {"question": "How do wind farms differ offshore?", "why": "scale"},
]
FOLLOW_UP = [{"question": "What do hydro dams do besides power?", "why": "a gap the findings leave"}]


def _prompt(messages: list[ModelMessage]) -> str:
    first = messages[0]
    assert isinstance(first, ModelRequest)
    return " ".join(str(p.content) for p in first.parts if isinstance(p, UserPromptPart))


class Researchers:
    """Plays the planner, the researcher and the writer, told apart by their instructions.

    The researcher searches the documents (or fetches the URL its question names, when it has
    fetch_url), then answers from the first thing it read, citing it. `delay_s` slows each answer.
    """

    def __init__(self, *, plan: list[dict[str, str]] = PLAN, follow_up: list[dict[str, str]] = FOLLOW_UP) -> None:
        self.plan = plan
        self.follow_up = follow_up
        self.delay_s = 0.0
        self.block: asyncio.Event | None = None  # researchers wait on it (cancel tests)
        self.calls: Counter[str] = Counter()  # (role: prompt) -> model requests
        self.tools_offered: list[set[str]] = []

    async def stream(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        instructions = info.instructions or ""
        prompt = _prompt(messages)
        if "You plan research" in instructions:
            follow_up = "Findings so far" in prompt
            self.calls[f"{'follow-up' if follow_up else 'plan'}: {prompt[:40]}"] += 1
            args = json.dumps({"sub_questions": self.follow_up if follow_up else self.plan})
            yield {0: DeltaToolCall(name=info.output_tools[0].name, json_args=args, tool_call_id="plan")}
        elif "You write a research report" in instructions:
            self.calls["writer"] += 1
            lines = ["# Energy sources", "", "Short answer: several sources turn motion or light into power.", ""]
            for run_id, answer in re.findall(r"### \[run:(\S+)\] .*\n(.*)", prompt):
                lines.append(f"- {answer} [run:{run_id}]")
            yield "\n".join(lines)
        else:
            last = messages[-1]
            returned = (
                [p for p in last.parts if isinstance(p, ToolReturnPart)] if isinstance(last, ModelRequest) else []
            )
            if not returned:  # first request: read a source
                self.calls[f"question: {prompt}"] += 1
                self.tools_offered.append({t.name for t in info.function_tools})
                if self.block is not None:
                    await self.block.wait()
                await asyncio.sleep(self.delay_s)
                url = re.search(r"https?://\S+", prompt)
                if url and "fetch_url" in self.tools_offered[-1]:
                    call = DeltaToolCall(
                        name="fetch_url", json_args=json.dumps({"url": url.group(0)}), tool_call_id="f"
                    )
                else:
                    words = [w for w in re.findall(r"[a-z]+", prompt.lower()) if len(w) > 4 and w != "power"]
                    query = " or ".join(words[:3]) or "power"
                    call = DeltaToolCall(
                        name="search_documents", json_args=json.dumps({"query": query}), tool_call_id="s"
                    )
                yield {0: call}
                return
            content = returned[0].content
            read: Any = json.loads(content) if isinstance(content, str) and content[:1] in "[{" else content
            if isinstance(read, dict) and UNTRUSTED_KEY in read:  # a fetched page, quoted as untrusted data
                read = read[UNTRUSTED_KEY]
            if isinstance(read, list) and read:
                yield f"{read[0]['title']} says so. [doc:{read[0]['document_id']}]"
            elif isinstance(read, dict) and "url" in read:  # a fetched page
                yield f"The page says: {read['text'][:60]} [{read['url']}]"
            else:
                yield "The sources do not answer this."

    def model(self) -> FunctionModel:
        return FunctionModel(stream_function=self.stream, model_name="researchers")

    def questions_asked(self) -> Counter[str]:
        return Counter({k: v for k, v in self.calls.items() if k.startswith("question: ")})


async def _ingest(client: httpx.AsyncClient) -> dict[str, str]:
    ids = {}
    for title, content in DOCUMENTS.items():
        response = await client.post("/v1/documents", json={"title": title, "content": content})
        assert response.status_code == 201, response.text
        ids[title] = response.json()["id"]
    return ids


async def _events(client: httpx.AsyncClient, job_id: str, last_id: str | None = None) -> list[dict[str, Any]]:
    """The job's SSE stream up to research_finished: [{id, event, data}]."""
    headers = {"Last-Event-ID": last_id} if last_id else {}
    events: list[dict[str, Any]] = []
    async with client.stream("GET", f"/v1/research/{job_id}/events", headers=headers, timeout=30) as response:
        assert response.status_code == 200
        frame: dict[str, Any] = {}
        async for line in response.aiter_lines():
            if line.startswith(("id", "event", "data")):
                key, _, value = line.partition(": ")
                frame[key] = json.loads(value) if key == "data" else value
            elif not line and frame:
                events.append(frame)
                frame = {}
    return events


async def _finished(client: httpx.AsyncClient, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    job: dict[str, Any] = {}

    async def ended() -> bool:
        nonlocal job
        response = await client.get(f"/v1/research/{job_id}")
        job = response.json() if response.status_code == 200 else {}
        return job.get("finished_at") is not None

    await wait_until(ended, timeout=timeout, what=f"research job {job_id} to end")
    return job


async def test_a_research_job_over_documents_writes_a_report_citing_real_documents_and_sub_runs(
    start_platform: Start,
) -> None:
    model = Researchers()
    platform = await start_platform(model.model(), background=True)
    async with platform.client() as client, HttpReceiver() as receiver:
        ids = await _ingest(client)
        config = {"channels": ["webhook"], "webhook_url": f"{receiver.url}/research"}
        response = await client.post(
            "/v1/research", json={"question": "Which energy sources exist?", "notification_config": config}
        )
        assert response.status_code == 202, response.text
        started = response.json()
        job_id, secret = started["id"], started["notification_secret"]
        events = await _events(client, job_id)
        job = await _finished(client, job_id)
        report = await client.get(f"/v1/research/{job_id}/report")
        tree = (await client.get(f"/v1/runs/{job_id}/tree")).json()
        usage = (await client.get("/v1/usage", params={"run_id": job_id})).json()["total"]
        resumed = await _events(client, job_id, last_id=events[2]["id"])
        await wait_until(lambda: _arrived(receiver), what="the job's webhook")

    assert job["status"] == "completed" and job["stopped_by"] is None
    kinds = [(s["kind"], s["depth"], s["status"]) for s in job["subruns"]]
    assert kinds == [
        ("plan", 0, "completed"),
        *[("question", 1, "completed")] * 3,
        ("follow_up", 1, "completed"),
        ("question", 2, "completed"),
        ("report", 0, "completed"),
    ]
    # the report cites only documents the job read and sub-runs it ran, and lists them
    cited = {c["ref"]: c for c in job["citations"]}
    assert all(c["verified"] for c in cited.values()), cited
    docs = {ref.removeprefix("doc:") for ref in cited if ref.startswith("doc:")}
    runs = {ref.removeprefix("run:") for ref in cited if ref.startswith("run:")}
    assert docs and docs <= set(ids.values())
    assert runs == {s["run_id"] for s in job["subruns"] if s["kind"] == "question"}
    assert ids["Hydro power"] in docs  # found by the follow-up question
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/markdown")
    assert report.text == job["report"] and "## Sources" in report.text and "[doc:" in report.text
    # progress: phases in order, every sub-run started and finished, running totals that only grow
    assert [e["data"]["status"] for e in events if e["event"] == "phase"] == [
        "planning", "researching", "researching", "synthesizing",
    ]  # fmt: skip
    assert sum(e["event"] == "subrun_started" for e in events) == len(job["subruns"])
    tokens = [e["data"]["totals"]["input_tokens"] for e in events if e["event"] == "subrun_finished"]
    assert len(tokens) == len(job["subruns"]) and tokens == sorted(tokens) and tokens[-1] > 0
    assert events[-1]["event"] == "research_finished" and events[-1]["data"]["status"] == "completed"
    assert job["totals"]["subruns"] == len(job["subruns"])
    assert resumed == events[3:]  # Last-Event-ID resumes right after that event
    # the job is a tree of its sub-runs; the webhook carries the report, signed with the job's secret
    assert tree["id"] == job_id
    assert sorted(c["id"] for c in tree["children"]) == sorted(s["run_id"] for s in job["subruns"])
    # the job's usage, rolled up from its runs' records, is the totals it kept itself
    assert (usage["runs"], usage["usage"]["requests"]) == (job["totals"]["subruns"], job["totals"]["requests"])
    assert usage["usage"]["input_tokens"] == job["totals"]["input_tokens"]
    hook = receiver.requests[0]
    assert verify_standard_webhook(secret, hook.headers, hook.body)
    assert json.loads(hook.body)["data"]["report"] == job["report"]


async def _arrived(receiver: HttpReceiver) -> bool:
    return bool(receiver.requests)


async def test_a_web_source_is_fetched_and_cited_and_only_the_asked_sources_are_offered(
    start_platform: Start,
) -> None:
    model = Researchers(plan=[], follow_up=[])
    platform = await start_platform(model.model(), background=True)
    page = b"<html><head><title>Tides</title></head><body><p>Tidal power uses the sea's tides.</p></body></html>"

    async def site(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html")]})
        await send({"type": "http.response.body", "body": page})

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(site, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve())
    try:
        async with platform.client() as client:
            question = f"What does http://127.0.0.1:{port}/tides say about tidal power?"
            web = await client.post("/v1/research", json={"question": question, "sources": ["web"], "max_depth": 1})
            job = await _finished(client, web.json()["id"])
            docs_only = await client.post("/v1/research", json={"question": "What is tidal power?", "max_depth": 1})
            await _finished(client, docs_only.json()["id"])
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
    assert job["status"] == "completed", job
    url = f"http://127.0.0.1:{port}/tides"
    [question_run] = [s for s in job["subruns"] if s["kind"] == "question"]  # no plan: the question itself
    assert question_run["sources"] == [{"ref": url, "title": "Tides"}]
    assert "Tidal power uses the sea" in question_run["output"]
    assert {"ref": url, "kind": "url", "title": "Tides", "verified": True} in job["citations"]
    assert model.tools_offered == [{"fetch_url"}, {"search_documents"}]


async def test_a_spent_budget_ends_the_job_with_a_partial_report_naming_the_limit(start_platform: Start) -> None:
    model = Researchers(plan=[*PLAN, {"question": "How do dams store water?", "why": "hydro"}])
    platform = await start_platform(model.model(), background=True)
    async with platform.client() as client:
        await _ingest(client)
        body = {"question": "Which energy sources exist?", "budget": {"max_subruns": 3}}
        by_runs = await _finished(client, (await client.post("/v1/research", json=body)).json()["id"])
        body = {"question": "Which energy sources exist?", "budget": {"max_tokens": 200}}
        by_tokens = await _finished(client, (await client.post("/v1/research", json=body)).json()["id"])
        body = {"question": "Which energy sources exist?", "budget": {"max_cost_usd": 1.0}}
        by_cost = await _finished(client, (await client.post("/v1/research", json=body)).json()["id"])

    assert (by_runs["status"], by_runs["stopped_by"]) == ("completed", "max_subruns")
    assert by_runs["totals"]["subruns"] == 3  # the plan and two questions: no more started
    statuses = Counter(s["status"] for s in by_runs["subruns"] if s["kind"] == "question")
    assert statuses["completed"] == 2 and statuses["completed"] + statuses["cancelled"] == 4
    assert not [s for s in by_runs["subruns"] if s["kind"] == "report"]
    report = by_runs["report"]
    assert "stopped early" in report and "max_subruns" in report and "## Not answered" in report
    answered = [s for s in by_runs["subruns"] if s["kind"] == "question" and s["status"] == "completed"]
    assert all(f"[run:{s['run_id']}]" in report and s["output"] in report for s in answered)
    assert all(c["verified"] for c in by_runs["citations"])

    assert (by_tokens["status"], by_tokens["stopped_by"]) == ("completed", "max_tokens")
    assert "max_tokens" in by_tokens["report"]
    assert all(s["status"] != "running" for s in by_tokens["subruns"])

    # the test model has no price: after the plan, a cost budget can no longer be kept, so the job stops
    assert (by_cost["stopped_by"], by_cost["totals"]["subruns"], by_cost["totals"]["cost_usd"]) == (
        "max_cost_usd", 1, None,
    )  # fmt: skip
    assert "could not be priced" in by_cost["report"]


async def test_cancel_stops_the_job_and_every_sub_run_it_started(start_platform: Start) -> None:
    model = Researchers()
    model.block = asyncio.Event()  # the researchers never answer on their own
    platform = await start_platform(model.model(), background=True)
    async with platform.client() as client:
        await _ingest(client)
        job_id = (await client.post("/v1/research", json={"question": "Which energy sources exist?"})).json()["id"]

        async def researching() -> bool:
            job: dict[str, Any] = (await client.get(f"/v1/research/{job_id}")).json()
            return bool(sum(s["status"] == "running" for s in job["subruns"]) == 3)

        await wait_until(researching, what="three sub-questions running")
        await wait_until(lambda: _asked(model, 3), what="the three researchers to be asked")
        asked = time.perf_counter()
        response = await client.post(f"/v1/research/{job_id}/cancel")
        assert response.status_code == 202
        job = await _finished(client, job_id, timeout=10)
        elapsed = time.perf_counter() - asked
        runs = [(await client.get(f"/v1/runs/{s['run_id']}")).json() for s in job["subruns"]]
        again = await client.post(f"/v1/research/{job_id}/cancel")
    assert elapsed < 5.0, f"cancel took {elapsed:.1f}s"
    assert job["status"] == "cancelled" and job["error"] == "cancelled by request"
    assert [s["status"] for s in job["subruns"] if s["kind"] == "question"] == ["cancelled"] * 3
    assert {r["id"]: r["status"] for r in runs if r["agent"] == "researcher"} == {
        s["run_id"]: "cancelled" for s in job["subruns"] if s["kind"] == "question"
    }
    assert "stopped early" in job["report"]
    assert again.status_code == 202 and again.json()["status"] == "cancelled"


async def _asked(model: Researchers, n: int) -> bool:
    return len(model.questions_asked()) >= n


async def test_kill_9_of_the_research_actor_mid_job_resumes_without_rerunning_finished_sub_runs(
    start_platform: Start, spawn_actor: Callable[..., Any]
) -> None:
    model = Researchers(
        plan=[{"question": f"How does {w} power work?", "why": "w"} for w in ("solar", "wind", "hydro", "tidal")]
    )
    model.delay_s = 0.6
    platform = await start_platform(model.model(), background=True, research=False)
    env = {"AGENTBUS_RESEARCH_CONCURRENCY": "1"}
    first = spawn_actor("research", env)
    async with platform.client() as client:
        await wait_until(lambda: _healthy(client), timeout=30, what="the research actor")
        await _ingest(client)
        job_id = (await client.post("/v1/research", json={"question": "Which energy sources exist?"})).json()["id"]

        async def two_answered() -> bool:
            job: dict[str, Any] = (await client.get(f"/v1/research/{job_id}")).json()
            return bool(sum(s["kind"] == "question" and s["status"] == "completed" for s in job["subruns"]) >= 2)

        await wait_until(two_answered, timeout=20, what="two answered sub-questions")
        first.kill()
        spawn_actor("research", env)
        job = await _finished(client, job_id, timeout=40)
    assert job["status"] == "completed", job
    # plan, 4 questions, follow-up, its question, report
    assert [s["status"] for s in job["subruns"]] == ["completed"] * 8
    # every sub-question reached the model once: the finished ones were not run again
    assert set(model.questions_asked().values()) == {1} and len(model.questions_asked()) == 5
    assert model.calls["writer"] == 1
    assert sum(v for k, v in model.calls.items() if k.startswith("plan")) == 1


async def _healthy(client: httpx.AsyncClient) -> bool:
    response = await client.get("/v1/research/none-such")
    return response.status_code == 404


async def test_bad_research_requests_get_a_clear_4xx(start_platform: Start) -> None:
    platform = await start_platform(background=True)
    async with platform.client() as client:
        cases = {
            "no question": ({}, 422),
            "empty question": ({"question": ""}, 422),
            "unknown source": ({"question": "q", "sources": ["intranet"]}, 422),
            "too many subtasks": ({"question": "q", "max_subtasks": 500}, 422),
            "negative budget": ({"question": "q", "budget": {"max_tokens": -1}}, 422),
            "unknown field": ({"question": "q", "depth": 3}, 422),
            "private webhook": (
                {"question": "q", "notification_config": {"channels": ["webhook"], "webhook_url": "http://10.0.0.1/"}},
                422,
            ),
        }
        for name, (body, status) in cases.items():
            response = await client.post("/v1/research", json=body)
            assert response.status_code == status, (name, response.text)
            assert response.json()["error"]["code"] == "invalid", name
        missing = await client.get("/v1/research/nope")
        report = await client.post("/v1/research", json={"question": "q"})
        early = await client.get(f"/v1/research/{report.json()['id']}/report")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert early.status_code in (200, 409)  # 409 while it runs (the offline job may already be done)


async def test_the_deadline_ends_a_job_with_what_was_found(start_platform: Start) -> None:
    model = Researchers()
    model.block = asyncio.Event()  # the researchers never answer: only the deadline ends the job
    platform = await start_platform(model.model(), background=True)
    async with platform.client() as client:
        started = time.perf_counter()
        body = {"question": "Which energy sources exist?", "deadline_seconds": 1.5}
        job = await _finished(client, (await client.post("/v1/research", json=body)).json()["id"], timeout=15)
        elapsed = time.perf_counter() - started
    assert (job["status"], job["stopped_by"]) == ("completed", "deadline_seconds")
    assert 1.5 <= elapsed < 6.0
    assert [s["status"] for s in job["subruns"]] == ["completed", "cancelled", "cancelled", "cancelled"]
    assert "ran out of time" in job["report"]


async def test_a_malformed_research_command_is_dead_lettered_and_the_actor_keeps_serving(
    start_platform: Start,
) -> None:
    platform = await start_platform(Researchers(plan=[], follow_up=[]).model(), background=True)
    bus = platform.bus
    sub = await bus.js.subscribe(subjects.dead_letter(subjects.ActorName.RESEARCH), stream=DLQ.name)
    trace = Trace(tenant="t1")
    await bus.js.publish(subjects.research_command("t1", "bad"), b'{"type": "start_research"}', headers=trace.headers())
    bad_limits = StartResearch(job_id="bad2", question="q", max_depth=50)
    await bus.publish(subjects.research_command("t1", "bad2"), bad_limits, trace=trace)
    reasons = [(await sub.next_msg(timeout=10)).headers or {} for _ in range(2)]
    assert "undecodable" in reasons[0][Header.DEAD_REASON.value]
    assert "max_depth" in reasons[1][Header.DEAD_REASON.value]  # by the actor, or by the schema's constraint
    async with platform.client() as client:
        job = await _finished(client, (await client.post("/v1/research", json={"question": "q"})).json()["id"])
        malformed = await client.post("/v1/research", content=b"{", headers={"content-type": "application/json"})
    assert job["status"] == "completed"
    assert malformed.status_code == 400 and malformed.json()["error"]["code"] == "malformed"


async def test_a_job_whose_command_is_dead_lettered_ends_failed_with_the_reason(
    start_platform: Start, bus_config: BusConfig, database_url: str
) -> None:
    platform = await start_platform(Researchers().model(), background=True, research=False)
    config = ResearchConfig(database_url=database_url, allow=Allowlist.parse("127.0.0.1"))
    async with running(ResearchActor(dataclasses.replace(bus_config, max_deliver=2), config)):
        conn = await asyncpg.connect(database_url)
        try:  # PostgreSQL refuses every sub-run: the job's command fails on each delivery
            await conn.execute(
                """
                CREATE FUNCTION research.refuse() RETURNS trigger LANGUAGE plpgsql
                AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$;
                CREATE TRIGGER refuse BEFORE INSERT ON research.subruns
                FOR EACH ROW EXECUTE FUNCTION research.refuse();
                """
            )
        finally:
            await conn.close()
        async with platform.client() as client:
            job_id = (await client.post("/v1/research", json={"question": "Which energy sources exist?"})).json()["id"]
            job = await _finished(client, job_id, timeout=20)
            events = await _events(client, job_id)
    assert job["status"] == "failed" and "disk full" in job["error"]
    assert events[-1]["event"] == "research_finished" and events[-1]["data"]["status"] == "failed"
