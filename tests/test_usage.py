"""Usage and cost over HTTP: runs priced by genai-prices (through pydantic-ai), rolled up per run,
conversation, task and tenant by GET /v1/usage, an unpriced model named instead of costing zero."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from pydantic_ai import Agent
from pydantic_ai.exceptions import ModelAPIError
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.fallback import FallbackModel
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel
from pydantic_ai.usage import RequestUsage

from actors.executor.costs import run_usage
from actors.executor.models import offline_model, placeholder
from tests.conftest import Platform, wait_until
from tests.models import prompts_of

Start = Callable[..., Awaitable[Platform]]
PRICED = "gpt-4o-mini"  # genai-prices knows it (offline: its prices ship with the package)
UNPRICED = "my-llama"  # an OpenAI-compatible server's model genai-prices has never heard of
INPUT_TOKENS, OUTPUT_TOKENS = 1000, 500  # what every answer below reports


def spent() -> RequestUsage:
    """A new one each time: pydantic-ai writes a response's cost into its usage."""
    return RequestUsage(input_tokens=INPUT_TOKENS, output_tokens=OUTPUT_TOKENS)


def _price(model_name: str) -> float:
    """What genai-prices says one answer of `model_name` at OpenAI costs."""
    response = ModelResponse(parts=[TextPart("x")], usage=spent(), model_name=model_name, provider_name="openai")
    return float(Decimal(response.cost().total_price))


def answering(model_name: str, *, fails_on: str | None = None) -> FunctionModel:
    """A model answering "ok" as `model_name` at OpenAI, reporting spent(); it fails (as a provider's 5xx
    would) on a prompt containing `fails_on`."""

    def whole(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if fails_on is not None and any(fails_on in p for p in prompts_of(messages)[-1:]):
            raise ModelAPIError(model_name, "the deployment is down")
        if (output := _structured(info)) is not None:
            return ModelResponse(parts=[ToolCallPart(*output)], usage=spent(), provider_name="openai")
        return ModelResponse(parts=[TextPart("ok")], usage=spent(), provider_name="openai")

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        if (output := _structured(info)) is not None:  # streamed, its usage is pydantic-ai's estimate
            yield {0: DeltaToolCall(name=output[0], json_args=output[1], tool_call_id="out")}
        else:
            yield "ok"

    return FunctionModel(whole, stream_function=stream, model_name=model_name)


def _structured(info: AgentInfo) -> tuple[str, str] | None:
    """The output tool call of an agent with structured output (a pipeline step): its name and JSON args."""
    if not info.output_tools or info.allow_text_output:
        return None
    tool = info.output_tools[0]
    return tool.name, json.dumps(placeholder(tool.parameters_json_schema))


async def _conversation(client: httpx.AsyncClient, agent: str | None = None) -> str:
    response = await client.post("/v1/conversations", json={"agent": agent} if agent else {})
    assert response.status_code == 201, response.text
    conversation_id: str = response.json()["id"]
    return conversation_id


async def _turn(client: httpx.AsyncClient, conversation_id: str, message: str) -> dict[str, Any]:
    """A whole (not streamed) turn, and its run's record."""
    response = await client.post(
        f"/v1/conversations/{conversation_id}/messages", json={"message": message, "stream": False}
    )
    assert response.status_code == 200, response.text
    return await _run(client, response.json()["run_id"])


async def _run(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/runs/{run_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _usage(client: httpx.AsyncClient, **params: str) -> dict[str, Any]:
    response = await client.get("/v1/usage", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _groups(rollup: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["key"]: g for g in rollup["groups"]}


async def test_runs_are_priced_and_roll_up_by_conversation_agent_model_and_day(start_platform: Start) -> None:
    platform = await start_platform(answering(PRICED))
    one = _price(PRICED)
    assert one > 0
    async with platform.client() as client:
        chat = await _conversation(client)
        first = await _turn(client, chat, "Hi")
        second = await _turn(client, chat, "And again")
        other = await _turn(client, await _conversation(client, "summarizer"), "Summarize this")
        runs = [first, second, other]
        everything = await _usage(client)
        by_agent = _groups(await _usage(client, group_by="agent"))
        by_model = _groups(await _usage(client, group_by="model"))
        by_day = _groups(await _usage(client, group_by="day"))
        in_chat = await _usage(client, conversation_id=chat)
        before = await _usage(client, to=first["created_at"])  # `to` is exclusive
        since_second = await _usage(client, **{"from": second["created_at"]})
    for run in runs:  # a run's own record: what its request cost, priced
        assert run["usage"]["cost_usd"] == pytest.approx(one) and run["usage"]["unpriced_models"] == []
        assert run["total_usage"] == run["usage"]  # no sub-runs
    total = everything["total"]
    assert total["runs"] == 3 and total["usage"]["requests"] == 3
    assert total["usage"]["input_tokens"] == 3 * INPUT_TOKENS
    assert total["usage"]["output_tokens"] == 3 * OUTPUT_TOKENS
    assert total["usage"]["cost_usd"] == pytest.approx(3 * one) and total["usage"]["unpriced_models"] == []
    assert everything["groups"] == [] and everything["group_by"] is None
    assert everything["from"] is None and everything["to"] is not None  # `to` defaults to now, and says so
    assert {k: g["runs"] for k, g in by_agent.items()} == {"assistant": 2, "summarizer": 1}
    assert by_agent["assistant"]["usage"]["cost_usd"] == pytest.approx(2 * one)
    assert set(by_model) == {r["model"] for r in runs}  # grouped by what the run records say
    assert sum(g["usage"]["cost_usd"] for g in by_model.values()) == pytest.approx(3 * one)
    days = {datetime.fromisoformat(r["created_at"]).astimezone(UTC).date().isoformat() for r in runs}
    assert set(by_day) == days and sum(g["runs"] for g in by_day.values()) == 3
    assert in_chat["total"]["runs"] == 2 and in_chat["conversation_id"] == chat
    assert in_chat["total"]["usage"]["cost_usd"] == pytest.approx(2 * one)
    assert before["total"]["runs"] == 0 and before["total"]["usage"]["cost_usd"] == 0
    assert since_second["total"]["runs"] == 2


async def test_an_unpriced_model_leaves_the_cost_null_and_named_never_zero(start_platform: Start) -> None:
    # a fallback chain: the unpriced deployment answers, unless it is down ("[down]"): then the priced one
    chain = FallbackModel(answering(UNPRICED, fails_on="[down]"), answering(PRICED))
    platform = await start_platform(chain)
    one = _price(PRICED)
    async with platform.client() as client:
        unpriced = await _turn(client, await _conversation(client), "Hi")
        priced = await _turn(client, await _conversation(client, "summarizer"), "[down] Summarize this")
        everything = await _usage(client)
        by_agent = _groups(await _usage(client, group_by="agent"))
    assert unpriced["usage"]["cost_usd"] is None and unpriced["usage"]["unpriced_models"] == [UNPRICED]
    assert unpriced["usage"]["requests"] == 1 and unpriced["usage"]["priced_cost_usd"] == 0
    assert priced["usage"]["cost_usd"] == pytest.approx(one) and priced["usage"]["unpriced_models"] == []
    total = everything["total"]["usage"]
    assert total["cost_usd"] is None and total["unpriced_models"] == [UNPRICED]
    assert total["priced_cost_usd"] == pytest.approx(one) and total["requests"] == 2
    assert by_agent["summarizer"]["usage"]["cost_usd"] == pytest.approx(one)
    assert by_agent["assistant"]["usage"]["cost_usd"] is None
    assert by_agent["assistant"]["usage"]["unpriced_models"] == [UNPRICED]


async def test_a_tasks_usage_holds_its_runs_and_the_pipeline_steps_under_them(start_platform: Start) -> None:
    platform = await start_platform(answering(PRICED), background=True)
    async with platform.client() as client:
        pipeline_task = await _task(client, {"pipeline": "text-analysis"})
        plain_task = await _task(client, {})
        of_pipeline = await _usage(client, task_id=pipeline_task["task_id"], group_by="agent")
        of_plain = await _usage(client, task_id=plain_task["task_id"])
        everything = await _usage(client)
        pipeline_run = await _run(client, pipeline_task["run_id"])
        steps = [await _run(client, f"{pipeline_task['run_id']}-step{n}") for n in (1, 2, 3)]
        in_its_conversation = await _usage(client, conversation_id=pipeline_run["conversation_id"])
        under_the_run = await _usage(client, run_id=pipeline_task["run_id"])
    steps_cost = sum(s["usage"]["cost_usd"] for s in steps)
    assert steps_cost > 0
    assert pipeline_run["task_id"] == pipeline_task["task_id"]
    # the pipeline's run asks no model itself: its own usage is none, its total is its steps'
    assert pipeline_run["usage"]["requests"] == 0
    assert pipeline_run["total_usage"]["requests"] == 3
    assert pipeline_run["total_usage"]["cost_usd"] == pytest.approx(steps_cost)
    assert of_pipeline["total"]["runs"] == 4 and of_pipeline["total"]["usage"]["requests"] == 3
    assert of_pipeline["total"]["usage"]["cost_usd"] == pytest.approx(steps_cost)
    assert {k: g["usage"]["requests"] for k, g in _groups(of_pipeline).items()} == {
        "pipeline:text-analysis": 0,
        "summarizer": 1,
        "sentiment": 1,
        "entities": 1,
    }
    assert of_plain["total"]["runs"] == 1 and of_plain["total"]["usage"]["requests"] == 1
    assert in_its_conversation["total"] == of_pipeline["total"] == under_the_run["total"]
    assert everything["total"]["runs"] == 5 and everything["total"]["usage"]["requests"] == 4
    assert everything["total"]["usage"]["cost_usd"] == pytest.approx(
        steps_cost + of_plain["total"]["usage"]["cost_usd"]
    )


async def _task(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, str]:
    """A delegated task, run to its end: its id and its run's."""
    created = await client.post("/v1/tasks", json={"task_type": "delegation", "prompt": "Ada wrote code.", **body})
    assert created.status_code == 202, created.text
    (run,) = created.json()["last_runs"]

    async def ended() -> bool:
        return bool((await client.get(f"/v1/task-runs/{run['id']}")).json()["status"] == "completed")

    await wait_until(ended, timeout=30, what="the task's run")
    return {"task_id": created.json()["id"], "run_id": run["id"]}


async def test_a_tenant_sees_only_its_own_usage(start_platform: Start) -> None:
    platform = await start_platform(answering(PRICED))
    async with platform.client() as client:
        chat = await _conversation(client)
        run = await _turn(client, chat, "Hi")
    async with platform.client(key=await platform.key_for("t2")) as stranger:
        theirs = await _usage(stranger)
        of_chat = await _usage(stranger, conversation_id=chat)
        of_run = await _usage(stranger, run_id=run["id"])
        record = await stranger.get(f"/v1/runs/{run['id']}")
    assert theirs["total"]["runs"] == of_chat["total"]["runs"] == of_run["total"]["runs"] == 0
    assert theirs["total"]["usage"]["requests"] == 0 and theirs["total"]["usage"]["cost_usd"] == 0
    assert record.status_code == 404


BAD_QUERIES = [
    ({"group_by": "week"}, "group_by"),
    ({"from": "last tuesday"}, "from"),
    ({"to": "2026-13-01"}, "to"),
    ({"from": "2026-11-02", "to": "2026-11-01T23:59:59Z"}, "from"),  # from after to
    ({"conversation_id": "not.an.id"}, "conversation_id"),
]


async def test_a_bad_usage_query_is_a_422_naming_the_parameter(start_platform: Start) -> None:
    platform = await start_platform()
    async with platform.client() as client:
        for params, key in BAD_QUERIES:
            response = await client.get("/v1/usage", params=params)
            assert response.status_code == 422, (params, response.text)
            error = response.json()["error"]
            assert error["code"] == "invalid" and [e["key"] for e in error["details"]["errors"]] == [key], params
        same = await client.get("/v1/usage", params={"from": "2026-11-01", "to": "2026-11-01T00:00:00Z"})
    assert same.status_code == 200 and same.json()["total"]["runs"] == 0  # an empty window is no error


async def test_the_offline_model_costs_nothing_and_is_not_taken_for_an_unpriced_llm() -> None:
    result = await Agent(offline_model()).run("Hi")
    offline = run_usage(result.usage, result.new_messages(), model="offline", offline=True)
    as_if_a_provider = run_usage(result.usage, result.new_messages(), model="offline", offline=False)
    assert (offline.cost_usd, offline.unpriced_models, offline.requests) == (0.0, (), 1)
    assert (as_if_a_provider.cost_usd, as_if_a_provider.unpriced_models) == (None, ("offline",))
