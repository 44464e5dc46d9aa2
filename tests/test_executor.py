"""The executor against a real nats-server and PostgreSQL; the test plays the conversation actor."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel
from pydantic_ai.models.test import TestModel

from actors.executor.actor import ExecutorActor
from actors.executor.config import ExecutorConfig
from bus import subjects
from bus.client import Bus
from bus.config import BusConfig
from bus.errors import BusError
from bus.headers import Header, Trace, new_id
from bus.streams import DLQ, EXECUTOR_EVT, RUN_OUT
from schemas.runs import (
    TERMINAL_OUTPUTS,
    CancelRun,
    GetRun,
    GetRunTree,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunFinished,
    RunOutput,
    RunRequest,
    RunStarted,
    RunStatus,
    RunTree,
    RunView,
    TextDelta,
    ToolCalled,
    ToolReturned,
)
from tests.conftest import running, wait_until
from tests.models import Gate, replying

TENANT = "acme"
TRACE = Trace(tenant=TENANT)


@pytest.fixture
async def bus(bus_config: BusConfig) -> AsyncIterator[Bus]:
    b = await Bus.connect(bus_config)
    yield b
    await b.close()


def executor(bus_config: BusConfig, database_url: str, model: Any = None, *, offline: bool = True) -> ExecutorActor:
    return ExecutorActor(bus_config, ExecutorConfig(database_url=database_url, offline=offline), model_override=model)


async def submit(bus: Bus, prompt: str = "hello", **fields: Any) -> str:
    run_id = fields.pop("run_id", None) or new_id()
    request = RunRequest(run_id=run_id, agent=fields.pop("agent", "assistant"), prompt=prompt, **fields)
    await bus.publish(subjects.executor_command(TENANT, run_id), request, trace=TRACE, msg_id=run_id)
    return run_id


async def outputs(bus: Bus, run_id: str, *, timeout: float = 20.0, tenant: str = TENANT) -> list[Any]:
    """The run's output stream from the start through the first terminal event."""
    seen: list[Any] = []
    async with asyncio.timeout(timeout):
        async for env in bus.replay(
            RUN_OUT.name,
            subjects.run_output(tenant, run_id),
            RunOutput,
            until=lambda b: isinstance(b, TERMINAL_OUTPUTS),
        ):
            seen.append(env.body)
    return seen


async def get_run(bus: Bus, run_id: str, *, tenant: str = TENANT) -> RunView:
    service = subjects.service(subjects.ActorName.EXECUTOR, "get_run")
    return await bus.request(service, GetRun(run_id=run_id), RunView, trace=Trace(tenant=tenant))


async def cancel(bus: Bus, request: CancelRun) -> RunView:
    return await bus.request(subjects.service(subjects.ActorName.EXECUTOR, "cancel"), request, RunView, trace=TRACE)


def text(events: list[Any]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def test_a_run_streams_its_text_in_order_and_is_recorded(
    bus_config: BusConfig, database_url: str, bus: Bus
) -> None:
    model = TestModel(custom_output_text="one two three four five six")
    async with running(executor(bus_config, database_url, model)):
        finished = bus.replay(EXECUTOR_EVT.name, subjects.executor_finished_all(), RunFinished)
        run_id = await submit(bus)
        events = await outputs(bus, run_id)
        assert isinstance(events[0], RunStarted) and events[0].attempt == 1 and events[0].model == "test"
        assert text(events) == "one two three four five six"
        done = events[-1]
        assert isinstance(done, RunCompleted) and done.output == "one two three four five six"
        history = ModelMessagesTypeAdapter.validate_json(bytes(done.new_messages))
        assert isinstance(history[0], ModelRequest) and isinstance(history[-1], ModelResponse)
        async with asyncio.timeout(10):
            envelope = await anext(finished)
        assert envelope.body.run_id == run_id and isinstance(envelope.body.result, RunCompleted)
        view = await get_run(bus, run_id)
        assert view.run.status is RunStatus.COMPLETED and view.run.usage.output_tokens > 0
        assert view.run.finished_at is not None


async def test_another_tenant_cannot_see_a_run(bus_config: BusConfig, database_url: str, bus: Bus) -> None:
    async with running(executor(bus_config, database_url, TestModel())):
        run_id = await submit(bus)
        await outputs(bus, run_id)
        with pytest.raises(BusError) as caught:
            await get_run(bus, run_id, tenant="other")
        assert caught.value.code == "not_found"


async def test_tool_calls_and_results_are_streamed(bus_config: BusConfig, database_url: str, bus: Bus) -> None:
    async def model(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        if not any(isinstance(p, ToolReturnPart) for m in messages for p in getattr(m, "parts", [])):
            yield {0: DeltaToolCall(name="current_time", json_args='{"timezone": "Europe/Paris"}', tool_call_id="c1")}
        else:
            yield "it is late"

    async with running(executor(bus_config, database_url, FunctionModel(stream_function=model))):
        events = await outputs(bus, await submit(bus, "what time is it?"))
    calls = [e for e in events if isinstance(e, ToolCalled)]
    returns = [e for e in events if isinstance(e, ToolReturned)]
    assert [(c.tool_name, json.loads(c.args)) for c in calls] == [("current_time", {"timezone": "Europe/Paris"})]
    assert returns[0].tool_call_id == "c1" and "+0" in returns[0].content  # an ISO time with its offset
    assert text(events) == "it is late"


async def test_sidekick_sees_the_context_and_can_read_parts_of_it(
    bus_config: BusConfig, database_url: str, bus: Bus
) -> None:
    seen_instructions: list[str] = []

    async def model(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        seen_instructions.append(info.instructions or "")
        if not any(isinstance(p, ToolReturnPart) for m in messages for p in getattr(m, "parts", [])):
            yield {0: DeltaToolCall(name="read_context", json_args='{"path": "cart.items.1"}', tool_call_id="r1")}
        else:
            yield "done"

    context: dict[str, object] = {"page": "checkout", "cart": {"items": ["apple", "pear"]}}
    async with running(executor(bus_config, database_url, FunctionModel(stream_function=model))):
        events = await outputs(bus, await submit(bus, "what is in my cart?", context=context))
    assert "<application_state>" in seen_instructions[0] and '"checkout"' in seen_instructions[0]
    assert [e.content for e in events if isinstance(e, ToolReturned)] == ['"pear"']


async def test_read_context_is_offered_only_with_context(bus_config: BusConfig, database_url: str, bus: Bus) -> None:
    tools: list[list[str]] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> str:
        tools.append([t.name for t in info.function_tools])
        return "ok"

    async with running(executor(bus_config, database_url, replying(model))):
        await outputs(bus, await submit(bus, "hi"))
        await outputs(bus, await submit(bus, "hi", context={"a": 1}))
    assert tools == [["current_time"], ["current_time", "read_context"]]


async def test_history_is_loaded_back_into_the_model(bus_config: BusConfig, database_url: str, bus: Bus) -> None:
    prompts: list[list[str]] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> str:
        requests = [m for m in messages if isinstance(m, ModelRequest)]
        prompts.append([str(p.content) for m in requests for p in m.parts if p.part_kind == "user-prompt"])
        return f"reply {len(prompts)}"

    async with running(executor(bus_config, database_url, replying(model))):
        first = (await outputs(bus, await submit(bus, "first")))[-1]
        assert isinstance(first, RunCompleted)
        await outputs(bus, await submit(bus, "second", history=first.new_messages))
    assert prompts == [["first"], ["first", "second"]]


async def test_cancel_stops_a_running_model_and_is_recorded(bus_config: BusConfig, database_url: str, bus: Bus) -> None:
    gate = Gate(["partial "], ["never"])
    async with running(executor(bus_config, database_url, gate.model())):
        run_id = await submit(bus)
        async with asyncio.timeout(10):
            await gate.reached.wait()
        view = await cancel(bus, CancelRun(run_id=run_id, reason="user left"))
        assert view.run.id == run_id
        events = await outputs(bus, run_id)
        assert isinstance(events[-1], RunCancelled) and events[-1].reason == "user left"
        assert text(events) == "partial "
        record = await get_run(bus, run_id)
        assert record.run.status is RunStatus.CANCELLED


async def test_a_run_cancelled_before_it_arrives_ends_cancelled(
    bus_config: BusConfig, database_url: str, bus: Bus
) -> None:
    calls: list[int] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> str:
        calls.append(1)
        return "ran anyway"

    async with running(executor(bus_config, database_url, replying(model))):
        run_id = new_id()
        await cancel(bus, CancelRun(run_id=run_id))
        await submit(bus, run_id=run_id)
        events = await outputs(bus, run_id)
    assert isinstance(events[-1], RunCancelled) and calls == []


async def test_a_redelivered_finished_run_is_announced_again_not_rerun(
    bus_config: BusConfig, database_url: str, bus: Bus
) -> None:
    calls: list[int] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> str:
        calls.append(1)
        return "once"

    async with running(executor(bus_config, database_url, replying(model))):
        run_id = await submit(bus)
        await outputs(bus, run_id)
        finished = bus.replay(EXECUTOR_EVT.name, subjects.executor_finished(TENANT, run_id), RunFinished)
        # the same command again, as JetStream would redeliver it (a new message id, so not deduped)
        await bus.publish(
            subjects.executor_command(TENANT, run_id),
            RunRequest(run_id=run_id, agent="assistant", prompt="hello"),
            trace=TRACE,
        )
        async with asyncio.timeout(10):
            assert isinstance((await anext(finished)).body.result, RunCompleted)
        await wait_until(lambda: _consumer_idle(bus), what="the redelivery to be acked")
    assert calls == [1]


async def _consumer_idle(bus: Bus) -> bool:
    info = await bus.js.consumer_info("AB_EXECUTOR_CMD", "executor-cmd")
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def test_unknown_agent_fails_the_run_with_a_reason(bus_config: BusConfig, database_url: str, bus: Bus) -> None:
    async with running(executor(bus_config, database_url, TestModel())):
        events = await outputs(bus, await submit(bus, agent="nobody"))
    assert isinstance(events[-1], RunFailed) and events[-1].error.code == "invalid"
    assert "nobody" in events[-1].error.message


async def test_a_failing_model_fails_the_run_and_the_actor_keeps_serving(
    bus_config: BusConfig, database_url: str, bus: Bus
) -> None:
    def model(messages: list[ModelMessage], info: AgentInfo) -> str:
        if "boom" in str(messages[-1]):
            raise RuntimeError("provider exploded")
        return "fine"

    async with running(executor(bus_config, database_url, replying(model))):
        failed = await outputs(bus, await submit(bus, "boom"))
        ok = await outputs(bus, await submit(bus, "hello"))
    assert isinstance(failed[-1], RunFailed) and "provider exploded" in failed[-1].error.message
    assert isinstance(ok[-1], RunCompleted) and ok[-1].output.strip() == "fine"


async def test_without_a_provider_the_offline_model_answers_and_says_so(
    bus_config: BusConfig, database_url: str, bus: Bus
) -> None:
    async with running(executor(bus_config, database_url, None, offline=True)):
        events = await outputs(bus, await submit(bus, "ping"))
    started, done = events[0], events[-1]
    assert isinstance(started, RunStarted) and started.offline and started.model == "offline"
    assert isinstance(done, RunCompleted) and done.offline and done.output.startswith("[offline model")
    assert done.output.rstrip().endswith("You said: ping")


async def test_malformed_command_is_dead_lettered_and_the_executor_keeps_serving(
    bus_config: BusConfig, database_url: str, bus: Bus
) -> None:
    async with running(executor(bus_config, database_url, TestModel(custom_output_text="alive"))):
        dead = bus.nc.jetstream()
        sub = await dead.subscribe(subjects.dead_letter(subjects.ActorName.EXECUTOR), stream=DLQ.name)
        subject = subjects.executor_command(TENANT, "x1")
        await bus.js.publish(subject, b'{"type": "run_request"}', headers=TRACE.headers())
        msg = await sub.next_msg(timeout=10)
        assert "undecodable" in (msg.headers or {})[Header.DEAD_REASON.value]
        events = await outputs(bus, await submit(bus))
        assert isinstance(events[-1], RunCompleted) and events[-1].output == "alive"


@pytest.mark.timeout(120)
async def test_kill_9_mid_run_restarts_the_run_on_another_executor(bus: Bus, spawn_actor: Callable[..., Any]) -> None:
    env = {"AGENTBUS_MODEL": "function:tests.models:slow"}
    first = spawn_actor("executor", env)
    run_id = await submit(bus, "tell me a long story")
    seen: list[Any] = []
    async with asyncio.timeout(60):
        async for env_ in bus.replay(RUN_OUT.name, subjects.run_output(TENANT, run_id), RunOutput):
            seen.append(env_.body)
            if isinstance(env_.body, TextDelta) and len(text(seen)) > 10:
                break
    first.kill()
    spawn_actor("executor", env)
    async with asyncio.timeout(60):
        async for env_ in bus.replay(RUN_OUT.name, subjects.run_output(TENANT, run_id), RunOutput, after_seq=0):
            if isinstance(env_.body, RunStarted) and env_.body.attempt == 2:
                restarted_at = len(seen)
            seen.append(env_.body)
            if isinstance(env_.body, TERMINAL_OUTPUTS):
                break
    tail = seen[restarted_at:]
    assert isinstance(tail[-1], RunCompleted) and text(tail) == "".join(f"w{i} " for i in range(40))
    view = await get_run(bus, run_id)
    assert view.run.status is RunStatus.COMPLETED and view.run.attempt == 2


async def test_runs_record_their_parent_and_form_a_tree(bus_config: BusConfig, database_url: str, bus: Bus) -> None:
    async with running(executor(bus_config, database_url, TestModel(call_tools=[]))):
        root = await submit(bus, "root")
        await outputs(bus, root)
        children: list[str] = []
        for i in range(2):  # one after the other: siblings are listed in the order they ran
            children.append(await submit(bus, f"child {i}", parent_run_id=root))
            await outputs(bus, children[-1])
        grandchild = await submit(bus, "grandchild", parent_run_id=children[0])
        await outputs(bus, grandchild)
        await outputs(bus, await submit(bus, "unrelated"))
        service = subjects.service(subjects.ActorName.EXECUTOR, "tree")
        tree = await bus.request(service, GetRunTree(run_id=root), RunTree, trace=TRACE)
        with pytest.raises(BusError):
            await bus.request(service, GetRunTree(run_id=root), RunTree, trace=Trace(tenant="other"))
    assert [r.id for r in tree.runs] == [root, *children, grandchild]
    assert [r.parent_run_id for r in tree.runs] == [None, root, root, children[0]]


SUBAGENTS_TOML = """
[agents.boss]
tools = []
subagents = ["helper", "boss"]

[agents.helper]
tools = []
"""


def _delegating(target: str) -> FunctionModel:
    """Asks `target` through ask_agent when it may, then answers with what came back."""

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        returned = [p for m in messages for p in getattr(m, "parts", []) if isinstance(p, ToolReturnPart)]
        if returned:
            yield f"done: {returned[-1].content}"
        elif any(t.name == "ask_agent" for t in info.function_tools):
            args = json.dumps({"agent": target, "task": "what is 6 * 7?"})
            yield {0: DeltaToolCall(name="ask_agent", json_args=args, tool_call_id="a1")}
        else:
            yield "42"

    return FunctionModel(stream_function=stream)


async def test_an_agent_hands_a_sub_problem_to_another_as_its_own_run(
    bus_config: BusConfig, database_url: str, bus: Bus, tmp_path: Path
) -> None:
    agents = tmp_path / "agents.toml"
    agents.write_text(SUBAGENTS_TOML)
    config = ExecutorConfig(database_url=database_url, agents_file=agents, offline=True)
    async with running(ExecutorActor(bus_config, config, model_override=_delegating("helper"))):
        root = await submit(bus, "delegate it", agent="boss")
        done = (await outputs(bus, root))[-1]
        tree = await bus.request(
            subjects.service(subjects.ActorName.EXECUTOR, "tree"), GetRunTree(run_id=root), RunTree, trace=TRACE
        )
    assert isinstance(done, RunCompleted) and done.output == "done: 42"
    assert [(r.agent, r.parent_run_id, r.status) for r in tree.runs] == [
        ("boss", None, RunStatus.COMPLETED),
        ("helper", root, RunStatus.COMPLETED),
    ]


async def test_the_subagent_depth_limit_is_enforced(
    bus_config: BusConfig, database_url: str, bus: Bus, tmp_path: Path
) -> None:
    agents = tmp_path / "agents.toml"
    agents.write_text(SUBAGENTS_TOML)
    config = ExecutorConfig(database_url=database_url, agents_file=agents, offline=True, max_subagent_depth=2)
    async with running(ExecutorActor(bus_config, config, model_override=_delegating("boss"))):
        root = await submit(bus, "recurse", agent="boss")
        done = (await outputs(bus, root))[-1]
        tree = await bus.request(
            subjects.service(subjects.ActorName.EXECUTOR, "tree"), GetRunTree(run_id=root), RunTree, trace=TRACE
        )
    assert [r.agent for r in tree.runs] == ["boss", "boss", "boss"]  # the root, depth 1, depth 2
    assert [r.parent_run_id for r in tree.runs][1:] == [tree.runs[0].id, tree.runs[1].id]
    assert isinstance(done, RunCompleted) and "depth limit (2) reached" in done.output


async def test_cancelling_a_parent_cancels_its_sub_run(
    bus_config: BusConfig, database_url: str, bus: Bus, tmp_path: Path
) -> None:
    agents = tmp_path / "agents.toml"
    agents.write_text(SUBAGENTS_TOML)
    helper_started = asyncio.Event()

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        if any(t.name == "ask_agent" for t in info.function_tools):
            args = json.dumps({"agent": "helper", "task": "think forever"})
            yield {0: DeltaToolCall(name="ask_agent", json_args=args, tool_call_id="a1")}
        else:
            helper_started.set()
            yield "thinking "
            await asyncio.Event().wait()

    config = ExecutorConfig(database_url=database_url, agents_file=agents, offline=True)
    async with running(ExecutorActor(bus_config, config, model_override=FunctionModel(stream_function=stream))):
        root = await submit(bus, "go", agent="boss")
        async with asyncio.timeout(10):
            await helper_started.wait()
        await cancel(bus, CancelRun(run_id=root))
        assert isinstance((await outputs(bus, root))[-1], RunCancelled)
        service = subjects.service(subjects.ActorName.EXECUTOR, "tree")

        async def all_cancelled() -> bool:
            tree = await bus.request(service, GetRunTree(run_id=root), RunTree, trace=TRACE)
            return len(tree.runs) == 2 and all(r.status is RunStatus.CANCELLED for r in tree.runs)

        await wait_until(all_cancelled, timeout=10, what="the sub-run to be cancelled too")


async def test_cancelling_a_pipeline_cancels_its_steps(bus_config: BusConfig, database_url: str, bus: Bus) -> None:
    steps_started = 0
    all_started = asyncio.Event()

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        nonlocal steps_started
        steps_started += 1
        if steps_started == 3:
            all_started.set()
        yield "working "
        await asyncio.Event().wait()

    async with running(executor(bus_config, database_url, FunctionModel(stream_function=stream))):
        root = await submit(bus, "some text", agent="pipeline:text-analysis")
        async with asyncio.timeout(10):
            await all_started.wait()
        await cancel(bus, CancelRun(run_id=root, reason="enough"))
        assert isinstance((await outputs(bus, root))[-1], RunCancelled)
        service = subjects.service(subjects.ActorName.EXECUTOR, "tree")

        async def all_cancelled() -> bool:
            tree = await bus.request(service, GetRunTree(run_id=root), RunTree, trace=TRACE)
            return len(tree.runs) == 4 and all(r.status is RunStatus.CANCELLED for r in tree.runs)

        await wait_until(all_cancelled, timeout=10, what="every step to be cancelled")


async def test_a_sub_run_gets_what_is_left_of_its_parents_token_budget(
    bus_config: BusConfig, database_url: str, bus: Bus, tmp_path: Path
) -> None:
    agents = tmp_path / "agents.toml"
    agents.write_text(SUBAGENTS_TOML)

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        returned = [p for m in messages for p in getattr(m, "parts", []) if isinstance(p, ToolReturnPart)]
        if returned:
            yield f"done: {returned[-1].content}"
        elif any(t.name == "ask_agent" for t in info.function_tools):
            args = json.dumps({"agent": "helper", "task": "write at length"})
            yield {0: DeltaToolCall(name="ask_agent", json_args=args, tool_call_id="a1")}
        else:
            yield "word " * 2000  # alone, within the parent's budget; after the parent's own use, past it

    config = ExecutorConfig(database_url=database_url, agents_file=agents, offline=True)
    async with running(ExecutorActor(bus_config, config, model_override=FunctionModel(stream_function=stream))):
        unlimited = await submit(bus, "delegate it", agent="boss")
        limited = await submit(bus, "delegate it", agent="boss", max_tokens=2100)
        unlimited_done = (await outputs(bus, unlimited))[-1]
        limited_done = (await outputs(bus, limited))[-1]
        tree = await bus.request(
            subjects.service(subjects.ActorName.EXECUTOR, "tree"), GetRunTree(run_id=limited), RunTree, trace=TRACE
        )
    assert isinstance(unlimited_done, RunCompleted) and unlimited_done.output.startswith("done: word word")
    assert isinstance(limited_done, RunCompleted), limited_done
    assert limited_done.output.startswith("done: the helper agent failed") and "token" in limited_done.output
    assert [(r.agent, r.status) for r in tree.runs] == [("boss", RunStatus.COMPLETED), ("helper", RunStatus.FAILED)]


# --- defect 4: a crash mid-pipeline must not start its steps again ------------------------------

PIPELINE_TOML = """
[agents.first]
instructions = "step first"
tools = []

[agents.second]
instructions = "step second"
tools = []

[agents.third]
instructions = "step third"
tools = []

[pipelines.trio]
steps = ["first", "second", "third"]
mode = "sequential"
"""


def counting() -> FunctionModel:
    """For an executor subprocess: streams 10 words over a second, noting in $AGENTBUS_TEST_CALLS when
    each step's model call starts and when it has answered."""
    calls = Path(os.environ["AGENTBUS_TEST_CALLS"])

    def note(line: str) -> None:
        with calls.open("a") as f:
            f.write(line + "\n")

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        step = info.instructions or ""
        note(f"start {step}")
        for i in range(10):
            await asyncio.sleep(0.1)
            yield f"{step}-{i} "
        note(f"end {step}")

    return FunctionModel(stream_function=stream, model_name="counting")


@pytest.mark.timeout(120)
async def test_kill_9_mid_pipeline_resumes_it_without_running_a_step_again(
    bus: Bus, spawn_actor: Callable[..., Any], tmp_path: Path
) -> None:
    agents, calls = tmp_path / "agents.toml", tmp_path / "calls.log"
    agents.write_text(PIPELINE_TOML)
    calls.touch()
    env = {
        "AGENTBUS_MODEL": "function:tests.test_executor:counting",
        "AGENTBUS_AGENTS_FILE": str(agents),
        "AGENTBUS_TEST_CALLS": str(calls),
    }
    first = spawn_actor("executor", env)
    root = await submit(bus, "a text", agent="pipeline:trio")

    async def second_step_running() -> bool:
        return "start step second" in calls.read_text()

    await wait_until(second_step_running, timeout=60, what="the second step to reach the model")
    first.kill()
    spawn_actor("executor", env)
    done = (await outputs(bus, root, timeout=60))[-1]
    tree = await bus.request(
        subjects.service(subjects.ActorName.EXECUTOR, "tree"), GetRunTree(run_id=root), RunTree, trace=TRACE
    )
    lines = calls.read_text().splitlines()
    assert isinstance(done, RunCompleted), done
    # every step answered once: the first was not run again, the one cut off was restarted, not doubled
    assert sorted(line for line in lines if line.startswith("end")) == [
        "end step first",
        "end step second",
        "end step third",
    ]
    assert lines.count("start step first") == 1 and lines.count("start step third") == 1
    assert [(r.id, r.status) for r in tree.runs] == [
        (root, RunStatus.COMPLETED),
        *[(f"{root}-step{n}", RunStatus.COMPLETED) for n in (1, 2, 3)],
    ]
    assert [r.attempt for r in tree.runs[1:]] == [1, 2, 1]


async def test_a_hand_off_is_a_sub_run_named_after_its_parent(
    bus_config: BusConfig, database_url: str, bus: Bus, tmp_path: Path
) -> None:
    agents = tmp_path / "agents.toml"
    agents.write_text(SUBAGENTS_TOML)
    config = ExecutorConfig(database_url=database_url, agents_file=agents, offline=True)
    async with running(ExecutorActor(bus_config, config, model_override=_delegating("helper"))):
        root = await submit(bus, "delegate it", agent="boss")
        await outputs(bus, root)
        tree = await bus.request(
            subjects.service(subjects.ActorName.EXECUTOR, "tree"), GetRunTree(run_id=root), RunTree, trace=TRACE
        )
    assert [r.id for r in tree.runs] == [root, f"{root}-sub1"]
    assert tree.root is not None and [c.id for c in tree.root.children] == [f"{root}-sub1"]


# --- defect 8: a dead-lettered run request ends its run failed, and says so ---------------------


async def _finished_end(bus: Bus, run_id: str) -> RunFinished:
    async with asyncio.timeout(15):
        found = bus.replay(EXECUTOR_EVT.name, subjects.executor_finished(TENANT, run_id), RunFinished)
        envelope = await anext(found)
        await found.aclose()  # type: ignore[attr-defined]
    finished: RunFinished = envelope.body
    return finished


async def test_a_refused_run_request_ends_its_run_failed_with_the_reason(
    bus_config: BusConfig, database_url: str, bus: Bus
) -> None:
    config = dataclasses.replace(bus_config, max_deliver=2)
    async with running(executor(config, database_url, TestModel())):
        run_id = await submit(bus, metadata={"depth": "deep"})
        finished = await _finished_end(bus, run_id)
        view = await get_run(bus, run_id)
        events = await outputs(bus, run_id)
    assert isinstance(finished.result, RunFailed) and "depth" in finished.result.error.message
    assert view.run.status is RunStatus.FAILED and view.run.error is not None and "depth" in view.run.error
    assert isinstance(events[-1], RunFailed)


async def test_a_run_whose_end_cannot_be_stored_fails_when_dead_lettered_not_running_forever(
    bus_config: BusConfig, database_url: str, bus: Bus
) -> None:
    config = dataclasses.replace(bus_config, max_deliver=2)
    async with running(executor(config, database_url, TestModel(custom_output_text="done"))):
        conn = await asyncpg.connect(database_url)
        try:  # PostgreSQL refuses every completed end: the request fails on each delivery
            await conn.execute(
                """
                CREATE FUNCTION executor.refuse() RETURNS trigger LANGUAGE plpgsql
                AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$;
                CREATE TRIGGER refuse BEFORE UPDATE ON executor.runs
                FOR EACH ROW WHEN (NEW.status = 'completed') EXECUTE FUNCTION executor.refuse();
                """
            )
        finally:
            await conn.close()
        run_id = await submit(bus)
        finished = await _finished_end(bus, run_id)
        view = await get_run(bus, run_id)
    assert isinstance(finished.result, RunFailed), finished.result
    assert "gave up" in finished.result.error.message and "disk full" in finished.result.error.message
    assert view.run.status is RunStatus.FAILED and view.run.attempt == 2
