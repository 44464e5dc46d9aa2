"""Quotas per tenant against the real actors: each one over its quota answers 429 (422 for a schedule faster
than the shortest interval) with `quota_exceeded` naming it, and the executor shares its run slots fairly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from actors.executor.actor import ExecutorActor
from actors.executor.config import ExecutorConfig
from bus import subjects, tenants
from bus.client import Bus
from bus.config import BusConfig
from bus.headers import Trace, new_id
from schemas.runs import RunRequest
from schemas.tenants import Quotas, TenantSettings
from tests.conftest import Platform, running, wait_until
from tests.models import prompts_of

Start = Callable[..., Awaitable[Platform]]


def refused(answer: httpx.Response, status: int, quota: str) -> bool:
    error = answer.json().get("error", {})
    return answer.status_code == status and error.get("code") == "quota_exceeded" and error["details"]["quota"] == quota


class Held:
    """A model whose every run waits until `release` is set: runs hold their slots as long as a test wants."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started: list[str] = []

    async def _stream(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        self.started.append(prompts_of(messages)[-1])
        await self.release.wait()
        yield "done"

    async def _whole(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.started.append(prompts_of(messages)[-1])
        await self.release.wait()
        return ModelResponse(parts=[TextPart("done")])

    def model(self) -> FunctionModel:
        return FunctionModel(self._whole, stream_function=self._stream)


async def test_each_quota_answers_with_its_name(start_platform: Start, bus_config: BusConfig) -> None:
    held = Held()
    quotas = Quotas(
        tasks=2, active_schedules=1, min_interval_s=60, documents=2, document_bytes=30, research_jobs=1, streams=1
    )
    bus = await Bus.connect(bus_config)
    try:  # before the actors start: each reads every tenant's settings as it starts, then follows them
        await tenants.write(bus, "t1", TenantSettings(quotas=quotas))
    finally:
        await bus.close()
    platform = await start_platform(held.model(), background=True)
    async with platform.client() as client:
        hourly = {"task_type": "scheduled", "prompt": "p", "interval_seconds": 3600}

        # the shortest interval: an interval, and a 6-field cron, faster than a minute; a minute is fine
        assert refused(await client.post("/v1/tasks", json={**hourly, "interval_seconds": 30}), 422, "min_interval_s")
        every_10_s = {**hourly, "interval_seconds": None, "schedule_expression": "*/10 * * * * *"}
        assert refused(await client.post("/v1/tasks", json=every_10_s), 422, "min_interval_s")
        minutely = {**every_10_s, "schedule_expression": "30 * * * * *"}
        first = await client.post("/v1/tasks", json=minutely)
        assert first.status_code == 201, first.text

        # active schedules, then tasks
        assert refused(await client.post("/v1/tasks", json=hourly), 429, "active_schedules")
        task_id = first.json()["id"]
        assert (await client.post(f"/v1/tasks/{task_id}/disable")).status_code == 200
        assert (await client.post("/v1/tasks", json=hourly)).status_code == 201
        assert refused(await client.post(f"/v1/tasks/{task_id}/enable"), 429, "active_schedules")
        assert refused(await client.post("/v1/tasks", json=hourly), 429, "tasks")
        patched = await client.patch(f"/v1/tasks/{task_id}", json={"interval_seconds": 5})
        assert refused(patched, 422, "min_interval_s")

        # documents and their bytes
        doc = {"title": "t", "content": "0123456789", "content_type": "text/plain"}
        assert (await client.post("/v1/documents", json=doc)).status_code == 201
        too_big = await client.post("/v1/documents", json={**doc, "content": "x" * 25})
        assert refused(too_big, 429, "document_bytes")
        assert (await client.post("/v1/documents", json=doc)).status_code == 201
        assert refused(await client.post("/v1/documents", json=doc), 429, "documents")

        # research jobs not finished (the first waits in the held model)
        question = {"question": "What is tidal power?", "max_depth": 1}
        assert (await client.post("/v1/research", json=question)).status_code == 202
        assert refused(await client.post("/v1/research", json=question), 429, "research_jobs")

        # open streams: the notifications' SSE, held open, then a second one
        async with client.stream("GET", "/v1/notifications/events") as stream:
            assert stream.status_code == 200
            assert refused(await client.get("/v1/notifications/events"), 429, "streams")

        async def slot_came_back() -> bool:  # once the gateway has seen the first one close
            async with client.stream("GET", "/v1/notifications/events") as again:
                return again.status_code == 200

        await wait_until(slot_came_back, timeout=10, what="the closed stream's slot to come back")
    async with platform.client(await platform.key_for("t2")) as other:  # another tenant: the defaults
        assert (await other.post("/v1/tasks", json=hourly)).status_code == 201
    held.release.set()


async def test_a_second_tenant_s_run_starts_while_another_holds_the_slots(
    bus_config: BusConfig, database_url: str
) -> None:
    held = Held()
    config = ExecutorConfig(database_url=database_url, offline=True, max_concurrent_runs=3, fair_share_retry_s=0.2)
    executor = ExecutorActor(bus_config, config, model_override=held.model())
    bus = await Bus.connect(bus_config)
    try:
        async with running(executor):

            async def submit(tenant: str, prompt: str) -> None:
                run_id = new_id()
                request = RunRequest(run_id=run_id, agent="assistant", prompt=prompt, stream=False)
                await bus.publish(
                    subjects.executor_command(tenant, run_id), request, trace=Trace(tenant=tenant), msg_id=run_id
                )

            for n in range(12):  # tenant A queues far more than there are slots
                await submit("tenant-a", f"a{n}")

            async def a_holds_its_share() -> bool:
                return len(held.started) >= 2

            await wait_until(a_holds_its_share, timeout=10, what="tenant A's runs to start")
            await submit("tenant-b", "b0")

            async def b_started() -> bool:
                return "b0" in held.started

            await wait_until(b_started, timeout=10, what="tenant B's run to start while A's runs hold their slots")
            assert sum(p.startswith("a") for p in held.started) == 2  # A alone held 2 of 3: one kept for B
            assert executor.fair.running("tenant-a") == 2 and executor.fair.running("tenant-b") == 1
            held.release.set()

            async def all_ran() -> bool:
                return len(held.started) == 13

            await wait_until(all_ran, timeout=20, what="every queued run to run once the slots free")
    finally:
        held.release.set()
        await bus.close()


async def test_the_concurrent_runs_quota_holds_runs_back_until_others_end(
    bus_config: BusConfig, database_url: str
) -> None:
    held = Held()
    config = ExecutorConfig(database_url=database_url, offline=True, max_concurrent_runs=8, fair_share_retry_s=0.2)
    executor = ExecutorActor(bus_config, config, model_override=held.model())
    bus = await Bus.connect(bus_config)
    await tenants.write(bus, "tenant-q", TenantSettings(quotas=Quotas(concurrent_runs=2)))
    try:
        async with running(executor):
            for n in range(4):
                run_id = new_id()
                request = RunRequest(run_id=run_id, agent="assistant", prompt=f"q{n}", stream=False)
                trace = Trace(tenant="tenant-q")
                await bus.publish(subjects.executor_command("tenant-q", run_id), request, trace=trace, msg_id=run_id)

            async def two_started() -> bool:
                return len(held.started) >= 2

            await wait_until(two_started, timeout=10, what="two runs to start")
            await asyncio.sleep(1.0)  # several rounds of offers: none of the other two may start
            assert len(held.started) == 2
            held.release.set()

            async def all_ran() -> bool:
                return len(held.started) == 4

            await wait_until(all_ran, timeout=20, what="the held-back runs to run")
    finally:
        held.release.set()
        await bus.close()
