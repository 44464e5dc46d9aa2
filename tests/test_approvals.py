"""Tool calls that wait for a person: a run parks (no slot held), each call is decided on its own, and the
run goes on from where it parked, also after kill -9 of the executor. A real nats-server and PostgreSQL; the
model is tests.models.mailer (two approval-needing calls and one plain call in one step)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from actors.executor.actor import ExecutorActor
from actors.executor.config import ExecutorConfig
from bus import subjects
from bus.client import Bus
from bus.config import BusConfig
from bus.errors import BusError
from bus.headers import Trace
from bus.streams import RUN_OUT
from schemas.approvals import (
    ApprovalDecided,
    ApprovalList,
    ApprovalStatus,
    ApprovalView,
    DecideApproval,
    Decision,
    ListApprovals,
    RunWaiting,
)
from schemas.errors import ErrorCode
from schemas.runs import RunCompleted, RunOutput, RunStatus
from tests.conftest import running, wait_until
from tests.models import mailer
from tests.test_executor import TENANT, TRACE, get_run, outputs, submit

AGENTS = """
[agents.mailer]
tools = ["python:tests.python_tools:send_email", "current_time"]
requires_approval = ["send_email"]
"""
EXECUTOR = subjects.ActorName.EXECUTOR


@pytest.fixture
async def bus(bus_config: BusConfig) -> AsyncIterator[Bus]:
    b = await Bus.connect(bus_config)
    yield b
    await b.close()


@pytest.fixture
def outbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "outbox.jsonl"
    path.touch()
    monkeypatch.setenv("AGENTBUS_TEST_OUTBOX", str(path))
    return path


def sent(outbox: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in outbox.read_text().splitlines()]


def executor(bus_config: BusConfig, database_url: str, tmp_path: Path, **config: Any) -> ExecutorActor:
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS)
    settings = ExecutorConfig(database_url=database_url, agents_file=agents, offline=True, **config)
    return ExecutorActor(bus_config, settings, model_override=mailer())


async def waiting(bus: Bus, run_id: str) -> RunWaiting:
    """The run's RunWaiting, read from its output."""
    async with asyncio.timeout(20):
        async for env in bus.replay(RUN_OUT.name, subjects.run_output(TENANT, run_id), RunOutput):
            if isinstance(env.body, RunWaiting):
                return env.body
    raise AssertionError("unreachable")


async def decide(bus: Bus, approval_id: str, decision: Decision, tenant: str = TENANT, **fields: Any) -> ApprovalView:
    command = DecideApproval(approval_id=approval_id, decision=decision, decided_by="key-1", **fields)
    service = subjects.service(EXECUTOR, "decide_approval")
    return await bus.request(service, command, ApprovalView, trace=Trace(tenant=tenant))


async def pending(bus: Bus, tenant: str = TENANT) -> ApprovalList:
    service = subjects.service(EXECUTOR, "list_approvals")
    return await bus.request(service, ListApprovals(), ApprovalList, trace=Trace(tenant=tenant))


async def test_a_step_with_two_calls_needing_approval_parks_decides_each_and_goes_on(
    bus_config: BusConfig, database_url: str, bus: Bus, tmp_path: Path, outbox: Path
) -> None:
    async with running(executor(bus_config, database_url, tmp_path, max_concurrent_runs=1)):
        run_id = await submit(bus, "mail them", agent="mailer")
        parked = await waiting(bus, run_id)
        assert [a.tool_call_id for a in parked.approvals] == ["mail-a", "mail-b"]
        first = parked.approvals[0]
        assert first.tool_name == "send_email" and json.loads(first.args) == {"to": "a@example.com", "body": "hello"}
        assert len(first.args_sha256) == 64 and first.status is ApprovalStatus.PENDING and first.expires_at
        assert (await get_run(bus, run_id)).run.status is RunStatus.WAITING
        assert sent(outbox) == []  # nothing needing approval ran

        # it holds no slot: with one slot, another run completes while it waits
        done = await outputs(bus, await submit(bus, "meanwhile"), timeout=20)
        assert isinstance(done[-1], RunCompleted)

        assert {a.id for a in (await pending(bus)).approvals} == {a.id for a in parked.approvals}
        approved = await decide(bus, parked.approvals[0].id, Decision.APPROVE)
        assert approved.approval.status is ApprovalStatus.APPROVED and approved.approval.decided_by == "key-1"
        assert (await get_run(bus, run_id)).run.status is RunStatus.WAITING  # one call of the step still waits
        await decide(bus, parked.approvals[1].id, Decision.DENY, reason="not this one")
        end = (await outputs(bus, run_id))[-1]
        assert (await get_run(bus, run_id)).run.status is RunStatus.COMPLETED

    assert isinstance(end, RunCompleted), end
    assert "send_email: sent to a@example.com" in end.output and "send_email: not this one" in end.output
    assert "current_time: " in end.output  # the plain call of the step ran before it parked
    assert sent(outbox) == [{"to": "a@example.com", "body": "hello"}]  # approved ran once; denied never


async def test_an_edit_runs_the_tool_with_the_edited_arguments_and_is_recorded_as_an_edit(
    bus_config: BusConfig, database_url: str, bus: Bus, tmp_path: Path, outbox: Path
) -> None:
    async with running(executor(bus_config, database_url, tmp_path)):
        run_id = await submit(bus, "mail them", agent="mailer")
        parked = await waiting(bus, run_id)
        with pytest.raises(BusError) as missing:
            await decide(bus, parked.approvals[0].id, Decision.EDIT)
        assert missing.value.code is ErrorCode.INVALID
        edited = await decide(bus, parked.approvals[0].id, Decision.EDIT, arguments={"to": "c@example.com"})
        assert edited.approval.status is ApprovalStatus.EDITED
        assert json.loads(edited.approval.edited_args or "") == {"to": "c@example.com"}
        with pytest.raises(BusError) as again:
            await decide(bus, parked.approvals[0].id, Decision.APPROVE)
        assert again.value.code is ErrorCode.CONFLICT
        with pytest.raises(BusError) as foreign:
            await decide(bus, parked.approvals[1].id, Decision.APPROVE, tenant="other")
        assert foreign.value.code is ErrorCode.NOT_FOUND
        assert (await pending(bus, "other")).approvals == []
        await decide(bus, parked.approvals[1].id, Decision.APPROVE)
        seen = await outputs(bus, run_id)
    assert isinstance(seen[-1], RunCompleted)
    assert sorted(m["to"] for m in sent(outbox)) == ["b@example.com", "c@example.com"]
    assert len([m for m in seen if isinstance(m, ApprovalDecided)]) == 2


async def test_an_approval_not_decided_in_time_expires_as_a_denial_and_the_run_goes_on(
    bus_config: BusConfig, database_url: str, bus: Bus, tmp_path: Path, outbox: Path
) -> None:
    async with running(executor(bus_config, database_url, tmp_path, approval_ttl_s=0.5, expiry_interval_s=0.1)):
        run_id = await submit(bus, "mail them", agent="mailer")
        end = (await outputs(bus, run_id))[-1]
        expired = (await bus.request(
            subjects.service(EXECUTOR, "list_approvals"), ListApprovals(status=None, run_id=run_id), ApprovalList,
            trace=TRACE,
        )).approvals  # fmt: skip
    assert isinstance(end, RunCompleted) and end.output.count("the approval expired") == 2
    assert {a.status for a in expired} == {ApprovalStatus.EXPIRED} and {a.decided_by for a in expired} == {"expiry"}
    assert sent(outbox) == []


async def test_a_waiting_run_is_cancelled_where_it_waits(
    bus_config: BusConfig, database_url: str, bus: Bus, tmp_path: Path, outbox: Path
) -> None:
    from schemas.runs import CancelRun, RunCancelled, RunView

    async with running(executor(bus_config, database_url, tmp_path)):
        run_id = await submit(bus, "mail them", agent="mailer")
        await waiting(bus, run_id)
        cancel = CancelRun(run_id=run_id, reason="changed my mind")
        await bus.request(subjects.service(EXECUTOR, "cancel"), cancel, RunView, trace=TRACE)
        end = (await outputs(bus, run_id))[-1]
        left = (await bus.request(
            subjects.service(EXECUTOR, "list_approvals"), ListApprovals(status=None, run_id=run_id), ApprovalList,
            trace=TRACE,
        )).approvals  # fmt: skip
    assert isinstance(end, RunCancelled) and sent(outbox) == []
    assert {a.status for a in left} == {ApprovalStatus.WITHDRAWN}


async def test_pending_approvals_survive_kill_9_of_the_executor(
    bus: Bus, spawn_actor: Callable[..., Any], tmp_path: Path, outbox: Path
) -> None:
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS)
    env = {
        "AGENTBUS_MODEL": "function:tests.models:mailer",
        "AGENTBUS_AGENTS_FILE": str(agents),
        "AGENTBUS_TEST_OUTBOX": str(outbox),
    }
    first = spawn_actor("executor", env)
    run_id = await submit(bus, "mail them", agent="mailer")
    parked = await waiting(bus, run_id)
    first.kill()
    spawn_actor("executor", env)

    async def answering() -> bool:
        try:
            return len((await pending(bus)).approvals) == 2
        except BusError:
            return False

    await wait_until(answering, timeout=30, what="a new executor to answer")
    for approval in parked.approvals:
        await decide(bus, approval.id, Decision.APPROVE)
    end = (await outputs(bus, run_id, timeout=30))[-1]
    assert isinstance(end, RunCompleted), end
    assert sorted(m["to"] for m in sent(outbox)) == ["a@example.com", "b@example.com"]


async def test_a_chat_turn_waiting_for_approvals_survives_kill_9_of_every_actor_and_is_stored_whole(
    bus: Bus, spawn_actor: Callable[..., Any], tmp_path: Path, outbox: Path
) -> None:
    """The turn's conversation and executor processes are both killed while it waits; new ones go on with it,
    and the conversation stores its reply (the gateway holds nothing: a client reconnects to the run's output)."""
    from schemas.conversation import ConversationList, ListConversations, ListMessages, MessageList
    from tests.test_conversation import Client

    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS)
    env = {
        "AGENTBUS_MODEL": "function:tests.models:mailer",
        "AGENTBUS_AGENTS_FILE": str(agents),
        "AGENTBUS_TEST_OUTBOX": str(outbox),
    }
    first = [spawn_actor("conversation"), spawn_actor("executor", env)]
    client = Client(bus)

    async def answering(actor: subjects.ActorName, verb: str, query: Any, reply: type[Any]) -> bool:
        try:
            await bus.request(subjects.service(actor, verb), query, reply, trace=TRACE)
        except BusError:
            return False
        return True

    async def conversation_up() -> bool:
        return await answering(subjects.ActorName.CONVERSATION, "list", ListConversations(), ConversationList)

    async def executor_up() -> bool:
        return await answering(EXECUTOR, "list_approvals", ListApprovals(), ApprovalList)

    # each wait bounds a process's start, which a loaded CI machine stretches: not the run's own time
    await wait_until(conversation_up, timeout=60, what="the conversation actor")
    await wait_until(executor_up, timeout=60, what="the executor")
    conversation = await client.create(agent="mailer")
    run_id = await client.post(conversation, "mail them")
    parked = await waiting(bus, run_id)
    for process in first:
        process.kill()
    spawn_actor("conversation")
    spawn_actor("executor", env)
    await wait_until(executor_up, timeout=60, what="a new executor")
    await wait_until(conversation_up, timeout=60, what="a new conversation actor")
    await decide(bus, parked.approvals[0].id, Decision.APPROVE)
    await decide(bus, parked.approvals[1].id, Decision.DENY, reason="only one")
    (turn,) = await client.turns(conversation, 1, timeout=60)
    messages = await client.request("messages", ListMessages(conversation_id=conversation), MessageList)
    assert type(turn).__name__ == "TurnCompleted", turn
    reply = messages.messages[-1]
    assert reply.role.value == "assistant" and reply.run_id == run_id
    assert "send_email: sent to a@example.com" in reply.content and "send_email: only one" in reply.content
    assert sent(outbox) == [{"to": "a@example.com", "body": "hello"}]
