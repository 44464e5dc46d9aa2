"""The durable journal across `kill -9` of the executor: a resumed run re-makes only the model request
and re-runs only the tool calls that had not finished, and a side-effecting call cut off mid-way is not
made again (the model is told so instead).

One run per place to kill a three-request run (model -> two lookups in parallel -> model -> charge ->
model): each run stops for good at its place in a first executor, which is killed once all have got
there; a second executor finishes them. What each made is counted from the lines the model and the
tools append to $AGENTBUS_TEST_CALLS, which outlives the processes. And an MCP server's calls (a run's
view of the executor's shared connection) are journaled and kept at most once the same way.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from actors._postgres import open_pool
from actors.executor.actor import MIGRATIONS
from actors.executor.deps import RunDeps
from actors.executor.journal import NOT_REPEATED, Journal, journal_scope
from actors.executor.journal_store import JournalStore
from actors.executor.mcp_servers import McpServers, McpServerSpec
from bus.client import Bus
from bus.config import BusConfig
from schemas.runs import RunCompleted, RunStarted
from tests.conftest import wait_until
from tests.test_executor import TENANT, outputs, submit, text

AGENTS_TOML = """
[agents.worker]
instructions = "work"
tools = ["python:tests.test_journal:lookup", "python:tests.test_journal:charge"]

[tools."python:tests.test_journal:charge"]
side_effects = true
"""
# where a run stops in the first executor (its prompt), and whether it is streamed
STOPS = {"model1": True, "lookup": False, "model2": True, "charge": True, "model3": False}


def _note(line: str) -> None:
    with Path(os.environ["AGENTBUS_TEST_CALLS"]).open("a") as f:
        f.write(line + "\n")


async def _stop_here(tag: str, place: str) -> None:
    """In the first executor, the run `tag` goes no further than `place` (until the process is killed)."""
    if os.environ.get("AGENTBUS_TEST_STOP") and tag == place:
        _note(f"{tag} stopped")
        await asyncio.sleep(3600)


def _tag(messages: list[ModelMessage]) -> str:
    first = messages[0].parts[0] if messages and messages[0].parts else None
    return first.content if isinstance(first, UserPromptPart) and isinstance(first.content, str) else ""


def _plan(messages: list[ModelMessage]) -> tuple[int, list[ToolCallPart], str]:
    """The n-th request of a run: its tool calls, or (the third) its text, which quotes what `charge` said."""
    n = 1 + sum(isinstance(m, ModelResponse) for m in messages)
    if n == 1:
        return n, [ToolCallPart("lookup", {"x": 1}, "l1"), ToolCallPart("lookup", {"x": 2}, "l2")], ""
    if n == 2:
        return n, [ToolCallPart("charge", {"amount": 5}, "c1")], ""
    said = [p.content for m in messages for p in m.parts if isinstance(p, ToolReturnPart) and p.tool_name == "charge"]
    return n, [], f"done: {said[-1]}"


async def _stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
    tag = _tag(messages)
    n, calls, text = _plan(messages)
    _note(f"{tag} model{n}")
    yield "thinking " if calls else "done"
    await _stop_here(tag, f"model{n}")
    for i, call in enumerate(calls):
        yield {i: DeltaToolCall(name=call.tool_name, json_args=call.args_as_json_str(), tool_call_id=call.tool_call_id)}
    if text:
        yield text.removeprefix("done")


async def _whole(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    tag = _tag(messages)
    n, calls, text = _plan(messages)
    _note(f"{tag} model{n}")
    await _stop_here(tag, f"model{n}")
    return ModelResponse(parts=[*calls, TextPart(text)] if text else calls)


def journaled() -> FunctionModel:
    """For the executor subprocess (AGENTBUS_MODEL=function:tests.test_journal:journaled)."""
    return FunctionModel(_whole, stream_function=_stream, model_name="journaled")


async def lookup(ctx: RunContext[Any], x: int) -> str:
    """Look x up (no side effects: safe to repeat)."""
    _note(f"{ctx.prompt} lookup{x}")
    if x == 2:
        await _stop_here(str(ctx.prompt), "lookup")
    return f"found {x}"


async def charge(ctx: RunContext[Any], amount: int) -> str:
    """Charge the customer (a side effect)."""
    _note(f"{ctx.prompt} charge")
    await _stop_here(str(ctx.prompt), "charge")
    return f"charged {amount}"


@pytest.mark.timeout(120)
async def test_kill_9_anywhere_in_a_run_resumes_it_from_its_last_finished_step(
    bus_config: BusConfig, database_url: str, spawn_actor: Callable[..., Any], tmp_path: Path
) -> None:
    agents, calls = tmp_path / "agents.toml", tmp_path / "calls.log"
    agents.write_text(AGENTS_TOML)
    calls.touch()
    env = {
        "AGENTBUS_MODEL": "function:tests.test_journal:journaled",
        "AGENTBUS_AGENTS_FILE": str(agents),
        "AGENTBUS_TEST_CALLS": str(calls),
    }
    first = spawn_actor("executor", {**env, "AGENTBUS_TEST_STOP": "1"})
    bus = await Bus.connect(bus_config)
    pool = await open_pool(database_url, schema="executor", migrations=MIGRATIONS, min_size=1, max_size=2)
    journal = JournalStore(pool)
    try:
        runs = {tag: await submit(bus, tag, agent="worker", stream=streamed) for tag, streamed in STOPS.items()}

        async def all_stopped() -> bool:
            stopped = {line.split()[0] for line in calls.read_text().splitlines() if line.endswith(" stopped")}
            # lookup(1) ran beside the stopped lookup(2): its result is in the journal before the kill
            looked_up = "tool@1:l1" in await journal.load(TENANT, runs["lookup"], 0)
            return stopped == set(STOPS) and looked_up

        await wait_until(all_stopped, timeout=60, what="every run to stop at its place")
        first.kill()
        spawn_actor("executor", env)
        streams = {tag: await outputs(bus, run_id, timeout=60) for tag, run_id in runs.items()}
        left = {tag: await journal.load(TENANT, run_id, 0) for tag, run_id in runs.items()}
    finally:
        await pool.close()
        await bus.close()

    ends = {tag: events[-1] for tag, events in streams.items()}
    made = Counter(line for line in calls.read_text().splitlines() if not line.endswith(" stopped"))
    once = ["model1", "lookup1", "lookup2", "model2", "charge", "model3"]
    for tag in STOPS:
        again = {"lookup": "lookup2"}.get(tag, tag)  # what was cut off: made twice; "charge" is not repeated
        expected = {what: 2 if what == again and tag != "charge" else 1 for what in once}
        assert {what: made[f"{tag} {what}"] for what in once} == expected, tag
        assert isinstance(ends[tag], RunCompleted), (tag, ends[tag])
    assert {tag: end.output for tag, end in ends.items() if tag != "charge"} == dict.fromkeys(
        set(STOPS) - {"charge"}, "done: charged 5"
    )
    for tag in ("model1", "model2"):  # streamed: the resumed attempt's output has every step's text again
        resumed = max(i for i, e in enumerate(streams[tag]) if isinstance(e, RunStarted))
        assert text(streams[tag][resumed:]) == "thinking thinking done: charged 5", tag
    told = ends["charge"].output
    assert "may or may not have taken effect" in told and "It was not repeated" in told, told
    assert left == {tag: {} for tag in STOPS}  # a finished run's journal is dropped


def _echo_once(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    said = [p.content for m in messages for p in m.parts if isinstance(p, ToolReturnPart)]
    if not said:
        return ModelResponse(parts=[ToolCallPart("local_echo", {"text": "hi"}, "e1")])
    return ModelResponse(parts=[TextPart(f"got: {said[-1]}")])


async def test_an_mcp_servers_calls_are_journaled_and_a_side_effecting_one_is_not_repeated(database_url: str) -> None:
    spec = McpServerSpec(command=sys.executable, args=["-m", "tests.mcp_servers", "stdio"], side_effects=True)
    servers = McpServers({"local": spec})
    agent = Agent(
        FunctionModel(_echo_once), name="m", deps_type=RunDeps, toolsets=[servers["local"].toolset(None)],
        capabilities=[Journal()],
    )  # fmt: skip
    deps = RunDeps(run_id="r", tenant=TENANT, context=None)
    pool = await open_pool(database_url, schema="executor", migrations=MIGRATIONS, min_size=1, max_size=2)
    store = JournalStore(pool)
    try:
        await servers.start()
        async with journal_scope(store, TENANT, "done", 0, fresh=True):
            assert (await agent.run("go", deps=deps)).output == "got: hi"
        recorded = await store.load(TENANT, "done", 0)
        assert set(recorded) == {"model@1", "started@1:e1", "tool@1:e1", "model@2"}
        # a crash between the start of the call and its result: it is reported, not repeated
        await store.record(TENANT, "cut", 0, "started@1:e1", None)
        async with journal_scope(store, TENANT, "cut", 0):
            told = (await agent.run("go", deps=deps)).output
        assert told.startswith("got: ") and NOT_REPEATED.format(tool="local_echo") in told
    finally:
        await servers.stop()
        await pool.close()
