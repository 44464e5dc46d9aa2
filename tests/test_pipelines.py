"""Pipelines over HTTP: typed results per step, parallel steps in flight together, the run tree, as a task."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

from pydantic_ai.messages import ModelMessage, ModelRequest, UserPromptPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from actors.executor.models import offline_model
from tests.conftest import Platform, wait_until

Start = Callable[..., Awaitable[Platform]]
DELAY = 0.3
TEXT = "Ada Lovelace wrote the first program in London. It was a wonderful achievement."


class Steps:
    """A model that plays each text-analysis agent, by its instructions, after DELAY seconds. With
    `together=n` a step answers only once n steps are in flight at once (so a pipeline that ran its steps
    one by one would never finish); `most` is how many ever were."""

    def __init__(self, together: int = 1) -> None:
        self.prompts: dict[str, str] = {}
        self.together = together
        self.in_flight = self.most = 0
        self.all_in = asyncio.Event()

    async def stream(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        if self.in_flight >= self.together:
            self.all_in.set()
        try:
            await asyncio.sleep(DELAY)
            await asyncio.wait_for(self.all_in.wait(), 30)
        finally:
            self.in_flight -= 1
        instructions = info.instructions or ""
        last = messages[-1]
        assert isinstance(last, ModelRequest)
        prompt = " ".join(str(p.content) for p in last.parts if isinstance(p, UserPromptPart))
        if "Summarize" in instructions:
            self.prompts["summarizer"] = prompt
            yield "Ada Lovelace wrote the first program."
            return
        tool = info.output_tools[0].name
        if "sentiment" in instructions:
            self.prompts["sentiment"] = prompt
            yield {0: DeltaToolCall(name=tool, json_args='{"label": "positive", "score": 0.9}', tool_call_id="s")}
        else:
            self.prompts["entities"] = prompt
            args = json.dumps(
                {"entities": [{"name": "Ada Lovelace", "type": "person"}, {"name": "London", "type": "place"}]}
            )
            yield {0: DeltaToolCall(name=tool, json_args=args, tool_call_id="e")}

    def model(self) -> FunctionModel:
        return FunctionModel(stream_function=self.stream)


async def test_a_parallel_pipeline_runs_its_steps_together_and_returns_typed_results(start_platform: Start) -> None:
    steps = Steps(together=3)  # each step waits until all three are in flight
    platform = await start_platform(steps.model())
    async with platform.client() as client:
        response = await client.post("/v1/pipelines/text-analysis/runs", json={"text": TEXT, "mode": "parallel"})
        assert response.status_code == 200, response.text
        result = response.json()
        tree = (await client.get(f"/v1/runs/{result['run_id']}/tree")).json()
    by_agent = {s["agent"]: s for s in result["steps"]}
    assert by_agent["summarizer"]["output"] == "Ada Lovelace wrote the first program."
    assert by_agent["sentiment"]["output"] == {"label": "positive", "score": 0.9}
    assert by_agent["entities"]["output"]["entities"][1] == {"name": "London", "type": "place"}
    assert all(s["status"] == "completed" and s["ms"] >= DELAY * 1000 * 0.9 for s in result["steps"])
    assert result["usage"]["requests"] == 3
    assert steps.most == 3
    assert sorted(c["agent"] for c in tree["children"]) == ["entities", "sentiment", "summarizer"]


async def test_a_sequential_pipeline_feeds_each_step_the_earlier_results(start_platform: Start) -> None:
    steps = Steps()
    platform = await start_platform(steps.model())
    async with platform.client() as client:
        response = await client.post("/v1/pipelines/text-analysis/runs", json={"text": TEXT, "mode": "sequential"})
    assert response.status_code == 200, response.text
    assert [s["agent"] for s in response.json()["steps"]] == ["summarizer", "sentiment", "entities"]
    assert steps.most == 1  # one step at a time
    assert "Ada Lovelace wrote the first program." in steps.prompts["sentiment"]
    assert '"label": "positive"' in steps.prompts["entities"]


async def test_an_unknown_pipeline_is_refused(start_platform: Start) -> None:
    platform = await start_platform()
    async with platform.client() as client:
        response = await client.post("/v1/pipelines/nope/runs", json={"text": "x"})
    assert response.status_code == 422 and "nope" in response.json()["error"]["message"]


async def test_a_task_can_run_a_pipeline(start_platform: Start) -> None:
    platform = await start_platform(Steps().model(), background=True)
    async with platform.client() as client:
        created = await client.post(
            "/v1/tasks", json={"task_type": "delegation", "prompt": TEXT, "pipeline": "text-analysis"}
        )
        assert created.status_code == 202, created.text
        (run,) = created.json()["last_runs"]

        async def done() -> bool:
            return bool((await client.get(f"/v1/task-runs/{run['id']}")).json()["status"] == "completed")

        await wait_until(done, timeout=30, what="the pipeline task")
        output = json.loads((await client.get(f"/v1/task-runs/{run['id']}")).json()["output"])
    assert output["pipeline"] == "text-analysis" and len(output["steps"]) == 3


async def test_the_offline_model_answers_structured_steps_too(start_platform: Start) -> None:
    platform = await start_platform(offline_model())
    async with platform.client() as client:
        response = await client.post("/v1/pipelines/text-analysis/runs", json={"text": TEXT})
    assert response.status_code == 200, response.text
    by_agent = {s["agent"]: s["output"] for s in response.json()["steps"]}
    assert by_agent["sentiment"] == {"label": "positive", "score": 0}  # placeholders, visibly not an LLM's
    assert by_agent["entities"] == {"entities": []}
    assert by_agent["summarizer"].startswith("[offline model")
