"""Model providers end to end: gateway + conversation + executor, pydantic-ai's OpenAI and Anthropic
models (the real SDKs, over real HTTP) against local provider servers that fail on demand."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic_ai.models import override_allow_model_requests

from actors.executor.breaker import BreakerConfig
from bus.breakers import read_breakers
from schemas.models import BreakerPhase
from tests.conftest import Platform, wait_until
from tests.provider_servers import Behaviour, ProviderServer

Start = Callable[..., Awaitable[Platform]]


@pytest.fixture(autouse=True)
def model_requests() -> Iterator[None]:
    """These tests' models are local HTTP servers: requests to them are allowed (conftest forbids real ones)."""
    with override_allow_model_requests(True):
        yield


@pytest.fixture
async def servers() -> AsyncIterator[tuple[ProviderServer, ProviderServer]]:
    """`first` speaks OpenAI's chat completions, `second` Anthropic's messages."""
    async with ProviderServer("first") as first, ProviderServer("second") as second:
        yield first, second


def agents_file(tmp_path: Path, first: ProviderServer, second: ProviderServer, model: str) -> Path:
    path = tmp_path / "agents.toml"
    path.write_text(
        f"""
[providers.first]
base_url = "{first.openai_url}"

[providers.second]
base_url = "{second.anthropic_url}"
api = "anthropic"

[agents.assistant]
model = {model}
tools = ["current_time"]
model_settings = {{ max_tokens = 256, timeout_s = 3 }}
"""
    )
    return path


CHAIN = '["first:gpt-test", "second:claude-test"]'


async def start(
    start_platform: Start, tmp_path: Path, servers: tuple[ProviderServer, ProviderServer], *, model: str = CHAIN,
    failures: int = 1, cooldown_s: float = 30.0, **kwargs: Any,
) -> Platform:  # fmt: skip
    breaker = BreakerConfig(failures=failures, cooldown_s=cooldown_s, cache_s=0.0)
    return await start_platform(
        agents_file=agents_file(tmp_path, *servers, model),
        providers=True,
        executor_config={"breaker": breaker},
        **kwargs,
    )


async def turn(client: httpx.AsyncClient, message: str = "hello") -> httpx.Response:
    conversation = await client.post("/v1/conversations", json={})
    assert conversation.status_code == 201, conversation.text
    return await client.post(f"/v1/conversations/{conversation.json()['id']}/messages", json={"message": message})


async def test_the_first_model_failing_moves_the_turn_to_the_next_and_the_record_names_it(
    start_platform: Start, tmp_path: Path, servers: tuple[ProviderServer, ProviderServer]
) -> None:
    first, second = servers
    first.behaviour = Behaviour.SERVER_ERROR
    second.tool = "current_time"  # the Anthropic side makes a tool call first, then answers
    platform = await start(start_platform, tmp_path, servers, failures=3)
    async with platform.client() as client:
        reply = await turn(client)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        record = (await client.get(f"/v1/runs/{body['run_id']}")).json()
    assert body["message"]["content"].strip() == "answer from second"
    assert body["model"] == "second:claude-test" and record["model"] == "second:claude-test"
    assert record["usage"]["tool_calls"] == 1 and record["usage"]["requests"] == 2
    # each model request (step) tries the chain from the top, once per model: the SDKs' own retries are off
    assert len(first.requests) == 2 and len(second.requests) == 2
    assert first.requests[0]["max_completion_tokens"] == 256 and second.requests[0]["max_tokens"] == 256


async def test_a_hung_model_times_out_and_the_turn_moves_on_streamed(
    start_platform: Start, tmp_path: Path, servers: tuple[ProviderServer, ProviderServer]
) -> None:
    first, second = servers
    first.behaviour = Behaviour.HANG  # accepts, never answers: the agent's 3 s request timeout ends it
    platform = await start(start_platform, tmp_path, servers, failures=3)
    async with platform.client() as client:
        conversation = (await client.post("/v1/conversations", json={})).json()
        url = f"/v1/conversations/{conversation['id']}/messages"
        async with client.stream("POST", url, json={"message": "hi", "stream": True}) as response:
            text = "".join([line async for line in response.aiter_lines()])
    assert "event: completed" in text and '"model":"second:claude-test"' in text
    assert second.requests[0]["stream"] is True  # streamed from the Anthropic side


async def test_every_model_down_answers_503_with_retry_after_and_the_open_breakers_send_nothing(
    start_platform: Start, tmp_path: Path, servers: tuple[ProviderServer, ProviderServer]
) -> None:
    first, second = servers
    first.behaviour = second.behaviour = Behaviour.SERVER_ERROR
    platform = await start(start_platform, tmp_path, servers, failures=1, cooldown_s=60.0)
    async with platform.client() as client:
        failed = await turn(client)  # both fail for real: each breaker opens
        assert failed.status_code == 503, failed.text
        assert failed.json()["error"]["code"] == "model_unavailable"
        sent = len(first.requests), len(second.requests)
        refused = await turn(client)  # both open: refused without a request
        health = (await client.get("/health")).json()
    assert sent == (1, 1) and (len(first.requests), len(second.requests)) == sent
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_unavailable"
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 60 and refused.json()["error"]["details"]["retry_after_s"] == str(retry_after)
    assert sorted(health["models"]["open"]) == ["first:gpt-test", "second:claude-test"]


async def test_a_streamed_turn_ends_with_the_model_unavailable_event(
    start_platform: Start, tmp_path: Path, servers: tuple[ProviderServer, ProviderServer]
) -> None:
    first, second = servers
    first.behaviour = second.behaviour = Behaviour.SERVER_ERROR
    platform = await start(start_platform, tmp_path, servers, failures=1, cooldown_s=60.0)
    async with platform.client() as client:
        conversation = (await client.post("/v1/conversations", json={})).json()
        events: list[tuple[str, dict[str, Any]]] = []
        async with client.stream(
            "POST", f"/v1/conversations/{conversation['id']}/messages", json={"message": "hi", "stream": True}
        ) as response:
            assert response.status_code == 200
            kind = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    events.append((kind, json.loads(line.removeprefix("data: "))))
    kind, last = events[-1]
    assert kind == "failed" and last["error"]["code"] == "model_unavailable"
    assert int(last["error"]["details"]["retry_after_s"]) >= 1


async def test_a_429_opens_the_breaker_for_its_retry_after_then_requests_go_again(
    start_platform: Start, tmp_path: Path, servers: tuple[ProviderServer, ProviderServer]
) -> None:
    first, _ = servers
    first.behaviour, first.retry_after = Behaviour.RATE_LIMITED, 2
    platform = await start(start_platform, tmp_path, servers, model='"first:gpt-test"', failures=5)
    async with platform.client() as client:
        limited = await turn(client)
        assert limited.status_code == 503 and limited.json()["error"]["code"] == "model_unavailable"
        assert 1 <= int(limited.headers["Retry-After"]) <= 2  # the provider's Retry-After, not the 30 s cool-down
        states = await read_breakers(platform.bus)
        assert states["first:gpt-test"].phase is BreakerPhase.OPEN  # one 429 opened it (threshold 5)
        first.behaviour = Behaviour.ANSWER
        during = await turn(client)  # still inside the Retry-After: not sent
        assert during.status_code == 503 and len(first.requests) == 1
        replies: list[httpx.Response] = []

        async def answered() -> bool:
            replies.append(await turn(client))
            return replies[-1].status_code == 200

        await wait_until(answered, timeout=20, interval=0.3, what="the model to answer after its Retry-After")
    assert replies[-1].json()["message"]["content"].strip() == "answer from first"
    assert (await read_breakers(platform.bus))["first:gpt-test"].phase is BreakerPhase.CLOSED


async def test_runs_spread_over_deployments_and_a_failing_one_is_left_out(
    start_platform: Start, tmp_path: Path
) -> None:
    async with ProviderServer("a") as a, ProviderServer("b") as b:
        path = tmp_path / "agents.toml"
        path.write_text(
            f"""
[providers.a]
base_url = "{a.openai_url}"
[providers.b]
base_url = "{b.openai_url}"

[agents.assistant]
model = [["a:llama", {{ model = "b:llama", weight = 1 }}]]
"""
        )
        breaker = BreakerConfig(failures=1, cooldown_s=60.0, cache_s=0.0)
        platform = await start_platform(agents_file=path, providers=True, executor_config={"breaker": breaker})
        async with platform.client() as client:
            for _ in range(4):
                assert (await turn(client)).status_code == 200
            spread = a.answered, b.answered
            a.behaviour = Behaviour.SERVER_ERROR
            for _ in range(4):  # the first that goes to `a` fails over to `b`; then `a` is open
                reply = await turn(client)
                assert reply.status_code == 200 and reply.json()["model"] == "b:llama"
    assert spread == (2, 2)
    assert len(a.requests) == 3  # 2 answered, then the one failure that opened its breaker
    assert a.requests[0]["max_completion_tokens"] == 4096  # no model_settings: the default cap on output


async def test_a_background_task_waits_while_every_model_is_down_then_completes(
    start_platform: Start, tmp_path: Path, servers: tuple[ProviderServer, ProviderServer]
) -> None:
    first, second = servers
    first.behaviour = second.behaviour = Behaviour.SERVER_ERROR
    platform = await start(
        start_platform, tmp_path, servers, failures=1, cooldown_s=1.0, background=True, research=False
    )
    async with platform.client() as client:
        created = await client.post("/v1/tasks", json={"task_type": "delegation", "prompt": "Summarize Q3"})
        assert created.status_code == 202, created.text
        (queued,) = created.json()["last_runs"]

        async def both_tried() -> bool:
            return bool(first.requests) and bool(second.requests)

        await wait_until(both_tried, timeout=20, what="the task's run to try both models")
        status = (await client.get(f"/v1/task-runs/{queued['id']}")).json()["status"]
        assert status in ("queued", "running")  # waiting, not failed
        first.behaviour = Behaviour.ANSWER

        async def completed() -> bool:
            run = (await client.get(f"/v1/task-runs/{queued['id']}")).json()
            assert run["status"] != "failed", run
            return bool(run["status"] == "completed")

        await wait_until(completed, timeout=30, what="the task's run to complete once a model is back")
        run = (await client.get(f"/v1/task-runs/{queued['id']}")).json()
        dead = await platform.bus.js.stream_info("AB_DLQ")
    assert run["output"].strip() == "answer from first"
    assert dead.state.messages == 0  # waiting never dead-lettered it


async def test_agentbus_models_lists_breakers_and_check_sends_each_model_one_request(
    start_platform: Start, tmp_path: Path, servers: tuple[ProviderServer, ProviderServer], bus_config: Any
) -> None:
    first, second = servers
    first.behaviour = Behaviour.SERVER_ERROR
    platform = await start(start_platform, tmp_path, servers, failures=1, cooldown_s=60.0)
    async with platform.client() as client:
        assert (await turn(client)).status_code == 200  # `first` fails (its breaker opens), `second` answers
    env = {
        **os.environ,
        "NATS_URL": ",".join(bus_config.servers),
        "AGENTBUS_NATS_CREDENTIALS": str(bus_config.credentials_dir),
    }

    async def agentbus(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bus.cli", *args, cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        return out.decode()

    listed = await agentbus("models")
    (first_row,) = [line for line in listed.splitlines() if line.startswith("assistant ") and "first:gpt-test" in line]
    (second_row,) = [line for line in listed.splitlines() if line.startswith("assistant ") and "second:" in line]
    assert " open " in first_row and "ModelServerError" in first_row and " closed " in second_row
    sent = len(first.requests), len(second.requests)
    checked = (await agentbus("models", "check")).split("\n\n")[-1]
    assert (len(first.requests), len(second.requests)) == (sent[0] + 1, sent[1] + 1)  # around the open breaker
    rows = {line.split()[0]: line for line in checked.splitlines()[1:]}
    assert "error: ModelServerError" in rows["first:gpt-test"] and " ok " in rows["second:claude-test"] + " "


async def test_a_research_job_waits_while_its_model_is_down_then_completes(
    start_platform: Start, tmp_path: Path, servers: tuple[ProviderServer, ProviderServer]
) -> None:
    first, _ = servers
    first.behaviour = Behaviour.SERVER_ERROR
    first.tool, first.tool_args = "final_result", {"sub_questions": []}  # the planner's structured answer: no questions
    path = tmp_path / "agents.toml"
    path.write_text(
        f"""
[providers.first]
base_url = "{first.openai_url}"

[agents.research-planner]
model = "first:gpt-test"
output = {{ type = "object", properties = {{ sub_questions = {{ type = "array", items = {{ type = "object" }} }} }} }}
[agents.research-writer]
model = "first:gpt-test"
"""
    )
    breaker = BreakerConfig(failures=1, cooldown_s=1.0, cache_s=0.0)
    platform = await start_platform(
        agents_file=path, providers=True, executor_config={"breaker": breaker}, background=True
    )
    async with platform.client() as client:
        started = await client.post("/v1/research", json={"question": "Which energy sources exist?"})
        assert started.status_code == 202, started.text
        job_id = started.json()["id"]

        async def tried() -> bool:
            return bool(first.requests)

        await wait_until(tried, timeout=20, what="the planner's sub-run to try its model")
        first.behaviour = Behaviour.ANSWER
        job: dict[str, Any] = {}

        async def ended() -> bool:
            nonlocal job
            job = (await client.get(f"/v1/research/{job_id}")).json()
            return job.get("finished_at") is not None

        await wait_until(ended, timeout=30, what="the job to end once its model is back")
    assert job["status"] == "completed", job
    assert all(s["status"] == "completed" for s in job["subruns"])
    assert "answer from first" in job["report"]
