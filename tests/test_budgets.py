"""Tenant budgets over HTTP: tokens and dollars per UTC day and month, summed over all the tenant's runs
(turns, tasks, pipelines, research), refused before a run starts or stopped in the middle of one with
`budget_exceeded`, shown with what is left by GET /v1/usage, and changed at once by the tenant settings."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
from pydantic_ai.messages import ModelResponse, TextPart

from bus import tenants
from schemas.tenants import Budgets, TenantSettings
from tests.conftest import Platform, wait_until
from tests.test_gateway import sse_events
from tests.test_usage import INPUT_TOKENS, OUTPUT_TOKENS, PRICED, answering, spent

Start = Callable[..., Awaitable[Platform]]
TURN_TOKENS = INPUT_TOKENS + OUTPUT_TOKENS  # what one answer of `answering` spends


def _price() -> float:
    response = ModelResponse(parts=[TextPart("x")], usage=spent(), model_name=PRICED, provider_name="openai")
    return float(Decimal(response.cost().total_price))


async def _budget(platform: Platform, tenant: str, budgets: Budgets) -> httpx.AsyncClient:
    """Set the tenant's budgets (as `agentbus tenants set` does) and wait until the executor follows them;
    a client with a key of the tenant."""
    await tenants.write(platform.bus, tenant, TenantSettings(budgets=budgets))

    cache = platform.executor.admission.tenants
    wanted = cache.defaults.resolve(TenantSettings(budgets=budgets)).budgets

    async def seen() -> bool:
        return bool(cache.get(tenant).budgets == wanted)

    await wait_until(seen, timeout=10, what="the executor to see the budget")
    return platform.client(await platform.key_for(tenant))


async def _chat(client: httpx.AsyncClient) -> str:
    response = await client.post("/v1/conversations", json={})
    assert response.status_code == 201, response.text
    conversation_id: str = response.json()["id"]
    return conversation_id


async def _say(client: httpx.AsyncClient, conversation_id: str, message: str = "Hi") -> httpx.Response:
    return await client.post(
        f"/v1/conversations/{conversation_id}/messages", json={"message": message, "stream": False}
    )


async def _budgets(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/v1/usage")
    assert response.status_code == 200, response.text
    budgets: dict[str, Any] = response.json()["budgets"]
    return budgets


def _refused(response: httpx.Response, budget: str) -> dict[str, Any]:
    assert response.status_code == 429, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == "budget_exceeded" and error["details"]["budget"] == budget, error
    return error


async def test_a_daily_token_budget_passes_a_turn_then_refuses_turns_tasks_pipelines_research_until_raised(
    start_platform: Start,
) -> None:
    platform = await start_platform(answering(PRICED), background=True)
    async with await _budget(platform, "tiny", Budgets(tokens_per_day=TURN_TOKENS)) as client:
        before = await _budgets(client)
        assert before["day"]["tokens_budget"] == TURN_TOKENS and before["day"]["tokens_left"] == TURN_TOKENS
        assert before["month"]["tokens_budget"] == 0 and before["month"]["tokens_left"] is None
        chat = await _chat(client)
        first = await _say(client, chat)
        assert first.status_code == 200, first.text  # it spends the budget exactly: not past it
        error = _refused(await _say(client, chat, "And again"), "tokens_per_day")
        refused_run = (await client.get(f"/v1/runs/{error['details']['run_id']}")).json()
        assert refused_run["status"] == "failed" and refused_run["usage"]["requests"] == 0  # never reached the model
        after = await _budgets(client)
        assert after["day"]["tokens"] == TURN_TOKENS and after["day"]["tokens_left"] == 0
        assert after["month"]["tokens"] == TURN_TOKENS  # the day is in the month
        assert after["day"]["resets_at"] > after["day"]["since"]

        streamed = await sse_events(
            client, "POST", f"/v1/conversations/{chat}/messages", json={"message": "Streamed", "stream": True}
        )
        assert streamed[-1]["event"] == "failed"
        assert streamed[-1]["data"]["error"]["code"] == "budget_exceeded"
        assert streamed[-1]["data"]["error"]["details"]["budget"] == "tokens_per_day"

        # a scheduled task's run is refused too, and its record says why
        task = await client.post("/v1/tasks", json={"task_type": "scheduled", "prompt": "go", "interval_seconds": 3600})
        assert task.status_code == 201, task.text
        task_id = task.json()["id"]
        assert (await client.post(f"/v1/tasks/{task_id}/execute")).status_code == 202
        runs: list[dict[str, Any]] = []

        async def task_run_ended() -> bool:
            nonlocal runs
            runs = (await client.get(f"/v1/tasks/{task_id}/runs")).json()["runs"]
            return bool(runs) and runs[0]["status"] not in ("queued", "running")

        await wait_until(task_run_ended, timeout=20, what="the task run to end")
        assert runs[0]["status"] == "failed" and "budget_exceeded" in runs[0]["error"], runs[0]
        assert "tokens_per_day" in runs[0]["error"]

        # a pipeline run is refused before its steps start
        _refused(await client.post("/v1/pipelines/text-analysis/runs", json={"text": "a text"}), "tokens_per_day")

        # a research job fails with it, saying which budget
        started = await client.post("/v1/research", json={"question": "Why is the sky blue?"})
        assert started.status_code == 202, started.text
        job: dict[str, Any] = {}

        async def job_ended() -> bool:
            nonlocal job
            job = (await client.get(f"/v1/research/{started.json()['id']}")).json()
            return job.get("finished_at") is not None

        await wait_until(job_ended, timeout=30, what="the research job to end")
        assert job["status"] == "failed" and job["error"].startswith("budget_exceeded (tokens_per_day)"), job

        # the budget raised in the tenant settings: the next turn runs
        await _budget(platform, "tiny", Budgets(tokens_per_day=10 * TURN_TOKENS))
        again = await _say(client, chat, "Now?")
        assert again.status_code == 200, again.text
        assert (await _budgets(client))["day"]["tokens_left"] == 8 * TURN_TOKENS


async def test_a_run_is_stopped_mid_run_at_a_token_or_a_dollar_budget(start_platform: Start) -> None:
    platform = await start_platform(answering(PRICED))
    async with await _budget(platform, "monthly", Budgets(tokens_per_month=TURN_TOKENS // 2)) as client:
        error = _refused(await _say(client, await _chat(client)), "tokens_per_month")
        assert "stopped" in error["message"]
        run = (await client.get(f"/v1/runs/{error['details']['run_id']}")).json()
        assert run["status"] == "failed" and run["usage"]["input_tokens"] == INPUT_TOKENS  # what it spent counts
        month = (await _budgets(client))["month"]
        assert month["tokens"] == TURN_TOKENS and month["tokens_left"] == 0
        _refused(await _say(client, await _chat(client)), "tokens_per_month")  # now refused before it starts

    price = _price()
    async with await _budget(platform, "dollars", Budgets(usd_per_day=price / 2)) as client:
        error = _refused(await _say(client, await _chat(client)), "usd_per_day")
        assert "stopped" in error["message"]
        day = (await _budgets(client))["day"]
        assert day["usd"] == pytest.approx(price) and day["usd_budget"] == pytest.approx(price / 2)
        assert day["usd_left"] == 0
    # a pipeline's steps are streamed: their usage is pydantic-ai's estimate (about 50 tokens each)
    async with await _budget(platform, "piped", Budgets(tokens_per_day=20)) as client:
        piped = await client.post("/v1/pipelines/text-analysis/runs", json={"text": "a text"})
        error = _refused(piped, "tokens_per_day")  # its steps were stopped: the pipeline says why
        assert "pipeline steps failed" in error["message"]
    async with platform.client() as client:  # another tenant, without a budget, is not touched
        assert (await _say(client, await _chat(client))).status_code == 200
        assert (await _budgets(client))["day"]["tokens_left"] is None
