"""Agents per tenant: `TenantSettings.agents` limits what a tenant's keys may run (403 forbidden at the
gateway, a run failed `forbidden` at the executor for a run published straight to the bus), and the internal
research agents run only under a research job (422 unknown_agent from a conversation, task or pipeline)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from bus import subjects, tenants
from bus.headers import Trace
from bus.runs import RunClient
from schemas.runs import RunCompleted, RunFailed, RunRequest
from schemas.tenants import TenantSettings
from tests.conftest import Platform, wait_until
from tests.test_usage import PRICED, answering

Start = Callable[..., Awaitable[Platform]]
NARROW = ("assistant", "pipeline:text-analysis")


async def _agents(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/v1/agents")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _code(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text


async def test_a_tenant_runs_only_its_agents_and_nobody_starts_a_research_agent_from_a_chat(
    start_platform: Start,
) -> None:
    platform = await start_platform(answering(PRICED), background=True)
    await tenants.write(platform.bus, "narrow", TenantSettings(agents=NARROW))
    narrow = platform.client(await platform.key_for("narrow"))

    async def followed() -> bool:  # by the gateway and by the executor
        listed = await _agents(narrow)
        executor = platform.executor.admission.tenants.get("narrow").agents
        return bool(listed["agents"] == ["assistant"] and executor == NARROW)

    async with narrow, platform.client() as anyone:
        await wait_until(followed, timeout=10, what="the tenant's agents to be followed")
        assert (await _agents(narrow))["pipelines"] == ["text-analysis"]
        everything = await _agents(anyone)
        assert "summarizer" in everything["agents"] and "researcher" not in everything["agents"]

        # the gateway: a conversation, task or research job naming an agent the tenant may not run
        _code(await narrow.post("/v1/conversations", json={"agent": "summarizer"}), 403, "forbidden")
        assert (await narrow.post("/v1/conversations", json={"agent": "assistant"})).status_code == 201
        task = {"task_type": "scheduled", "prompt": "go", "interval_seconds": 3600}
        _code(await narrow.post("/v1/tasks", json={**task, "agent": "summarizer"}), 403, "forbidden")
        created = await narrow.post("/v1/tasks", json=task)
        assert created.status_code == 201, created.text
        patched = await narrow.patch(f"/v1/tasks/{created.json()['id']}", json={"agent": "summarizer"})
        _code(patched, 403, "forbidden")
        _code(await narrow.post("/v1/research", json={"question": "q", "agent": "summarizer"}), 403, "forbidden")

        # an internal research agent is no agent for a chat, a task or a pipeline: for any tenant
        for client in (narrow, anyone):
            _code(await client.post("/v1/conversations", json={"agent": "researcher"}), 422, "unknown_agent")
            _code(await client.post("/v1/tasks", json={**task, "agent": "research-planner"}), 422, "unknown_agent")

        # an allowed pipeline runs its steps (agents the tenant could not name itself)
        piped = await narrow.post("/v1/pipelines/text-analysis/runs", json={"text": "A calm, clear day."})
        assert piped.status_code == 200, piped.text
        # and a research job runs the research agents under it
        job = await narrow.post("/v1/research", json={"question": "Why is the sky blue?"})
        assert job.status_code == 202, job.text
        found: dict[str, Any] = {}

        async def ended() -> bool:
            nonlocal found
            found = (await narrow.get(f"/v1/research/{job.json()['id']}")).json()
            return found.get("finished_at") is not None

        await wait_until(ended, timeout=30, what="the research job to end")
        assert found["status"] == "completed", found


async def test_the_executor_refuses_what_a_direct_bus_publisher_may_not_run(start_platform: Start) -> None:
    platform = await start_platform(answering(PRICED))
    await tenants.write(platform.bus, "narrow", TenantSettings(agents=NARROW))
    await wait_until(
        lambda: _is(platform.executor.admission.tenants.get("narrow").agents, NARROW),
        timeout=10,
        what="the executor to follow the tenant's agents",
    )
    runs = RunClient(platform.bus)

    async def run(tenant: str, agent: str, n: int, origin: subjects.RunOrigin | None = None) -> Any:
        request = RunRequest(run_id=f"direct-{tenant}-{n}", agent=agent, prompt="hello", stream=False)
        return await runs.run(request, Trace(tenant=tenant), origin=origin)

    refused = await run("narrow", "summarizer", 1)
    assert isinstance(refused, RunFailed) and refused.error.code == "forbidden", refused
    assert refused.error.details["agent"] == "summarizer"
    assert isinstance(await run("narrow", "assistant", 2), RunCompleted)
    internal = await run("t1", "research-planner", 3)
    assert isinstance(internal, RunFailed) and internal.error.code == "forbidden", internal
    assert "research" in internal.error.message
    # a research job's sub-run: on the research origin's subject, which only the research actor may publish
    assert isinstance(await run("t1", "research-planner", 4, subjects.RunOrigin.RESEARCH), RunCompleted)
    record = await runs.record("direct-narrow-1", Trace(tenant="narrow"))
    assert record is not None and record.status == "failed" and "may not run" in (record.error or "")


async def _is(value: object, expected: object) -> bool:
    return value == expected
