"""The conversation actor with a real executor, nats-server and PostgreSQL (the model is a FunctionModel)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pydantic_ai.messages import ModelMessage, ModelRequest, UserPromptPart
from pydantic_ai.models import Model
from pydantic_ai.models.function import AgentInfo, FunctionModel

from actors.conversation.actor import ConversationActor
from actors.conversation.config import ConversationConfig
from actors.executor.actor import ExecutorActor
from actors.executor.config import ExecutorConfig
from bus import subjects
from bus.client import Bus
from bus.config import BusConfig
from bus.errors import BusError
from bus.headers import Header, Trace, new_id
from bus.streams import CONVERSATION_EVT, DLQ, RUN_OUT
from schemas.conversation import (
    ContinueConversation,
    ConversationView,
    CreateConversation,
    GetConversation,
    ListMessages,
    MessageList,
    Pattern,
    Policy,
    PostMessage,
    Role,
    SetContext,
    TurnCompleted,
    TurnFailed,
)
from schemas.runs import TERMINAL_OUTPUTS, RunFailed, RunOutput, TextDelta
from tests.conftest import running
from tests.models import Gate, replying

TENANT = "acme"
TRACE = Trace(tenant=TENANT)


def prompts_of(messages: list[ModelMessage]) -> list[str]:
    return [
        str(p.content)
        for m in messages
        if isinstance(m, ModelRequest)
        for p in m.parts
        if isinstance(p, UserPromptPart)
    ]


class Platform:
    """Conversation + executor actors in this event loop, and a client bus."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def request(self, verb: str, message: Any, reply: type[Any], tenant: str = TENANT) -> Any:
        service = subjects.service(subjects.ActorName.CONVERSATION, verb)
        return await self.bus.request(service, message, reply, trace=Trace(tenant=tenant))

    async def create(self, **fields: Any) -> str:
        conversation_id = new_id()
        await self.request("create", CreateConversation(conversation_id=conversation_id, **fields), ConversationView)
        return conversation_id

    async def post(
        self, conversation_id: str, content: str, *, run_id: str | None = None, msg_id: str | None = None
    ) -> str:
        run_id = run_id or new_id()
        message = PostMessage(conversation_id=conversation_id, message_id=f"m-{run_id}", run_id=run_id, content=content)
        subject = subjects.conversation_command(TENANT, conversation_id)
        await self.bus.publish(subject, message, trace=TRACE, msg_id=msg_id or run_id)
        return run_id

    async def turns(self, conversation_id: str, count: int, timeout: float = 30.0) -> list[TurnCompleted | TurnFailed]:
        """The first `count` turn events of the conversation."""
        seen: list[TurnCompleted | TurnFailed] = []
        subject = subjects.conversation_event(TENANT, conversation_id, "turn")
        async with asyncio.timeout(timeout):
            async for env in self.bus.replay(CONVERSATION_EVT.name, subject, TurnCompleted | TurnFailed):
                seen.append(env.body)
                if len(seen) == count:
                    break
        return seen

    async def messages(self, conversation_id: str) -> MessageList:
        result: MessageList = await self.request("messages", ListMessages(conversation_id=conversation_id), MessageList)
        return result


@pytest.fixture
async def start(bus_config: BusConfig, database_url: str) -> AsyncIterator[Callable[..., Any]]:
    """start(model, replicas=1) -> a running Platform; everything stops after the test."""
    stack: list[Any] = []

    async def start_platform(model: Model, replicas: int = 1) -> Platform:
        actors = [ConversationActor(bus_config, ConversationConfig(database_url=database_url)) for _ in range(replicas)]
        executor = ExecutorActor(
            bus_config, ExecutorConfig(database_url=database_url, offline=True), model_override=model
        )
        ctx = running(executor, *actors)
        await ctx.__aenter__()
        stack.append(ctx)
        bus = await Bus.connect(bus_config)
        stack.append(bus)
        return Platform(bus)

    yield start_platform
    for item in reversed(stack):
        if isinstance(item, Bus):
            await item.close()
        else:
            await item.__aexit__(None, None, None)


def echo(messages: list[ModelMessage], info: AgentInfo) -> str:
    return "echo: " + prompts_of(messages)[-1]


async def test_create_get_and_tenant_isolation(start: Callable[..., Any]) -> None:
    platform: Platform = await start(replying(echo))
    conversation_id = await platform.create(pattern=Pattern.SIDEKICK, context={"page": "home"}, policy=Policy.REJECT)
    view = await platform.request("get", GetConversation(conversation_id=conversation_id), ConversationView)
    assert view.conversation.pattern is Pattern.SIDEKICK and view.conversation.agent == "assistant"
    assert view.conversation.context == {"page": "home"} and view.conversation.policy is Policy.REJECT
    again = CreateConversation(conversation_id=conversation_id, pattern=Pattern.SIDEKICK)
    recreated = await platform.request("create", again, ConversationView)
    assert recreated.conversation.created_at == view.conversation.created_at
    with pytest.raises(BusError) as caught:
        await platform.request(
            "get", GetConversation(conversation_id=conversation_id), ConversationView, tenant="other"
        )
    assert caught.value.code == "not_found"
    with pytest.raises(BusError) as caught:
        await platform.request("create", again, ConversationView, tenant="other")
    assert caught.value.code == "conflict"


async def test_a_turn_stores_both_messages_and_the_next_turn_sees_the_history(start: Callable[..., Any]) -> None:
    seen: list[list[str]] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> str:
        seen.append(prompts_of(messages))
        return f"reply {len(seen)}"

    platform: Platform = await start(replying(model))
    conversation_id = await platform.create()
    await platform.post(conversation_id, "first")
    await platform.post(conversation_id, "second")
    first, second = await platform.turns(conversation_id, 2)
    assert isinstance(first, TurnCompleted) and first.message.content.strip() == "reply 1"
    assert isinstance(second, TurnCompleted) and second.message.metadata["offline"] == "false"
    assert seen == [["first"], ["first", "second"]]
    listed = (await platform.messages(conversation_id)).messages
    assert [(m.role, m.content.strip()) for m in listed] == [
        (Role.USER, "first"), (Role.ASSISTANT, "reply 1"), (Role.USER, "second"), (Role.ASSISTANT, "reply 2"),
    ]  # fmt: skip


async def test_two_replicas_apply_a_burst_of_turns_in_order(start: Callable[..., Any]) -> None:
    seen: list[list[str]] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> str:
        seen.append(prompts_of(messages))
        return "ok"

    platform: Platform = await start(replying(model), replicas=2)
    conversation_id = await platform.create()
    sent = [f"m{i}" for i in range(20)]
    await asyncio.gather(*(platform.post(conversation_id, text) for text in sent))  # published concurrently
    events = await platform.turns(conversation_id, 20, timeout=60)
    assert all(isinstance(e, TurnCompleted) for e in events)
    order = [s[-1] for s in seen]
    assert sorted(order, key=lambda t: int(t[1:])) == sent  # every message ran once
    assert all(s == order[: i + 1] for i, s in enumerate(seen))  # each turn saw exactly the turns before it
    listed = (await platform.messages(conversation_id)).messages
    assert [m.content for m in listed if m.role is Role.USER] == order


async def test_reject_policy_fails_a_message_while_a_turn_runs(start: Callable[..., Any]) -> None:
    gate = Gate(["thinking "], ["done"])
    platform: Platform = await start(gate.model())
    conversation_id = await platform.create(policy=Policy.REJECT)
    await platform.post(conversation_id, "first")
    async with asyncio.timeout(10):
        await gate.reached.wait()
    rejected = await platform.post(conversation_id, "second")
    subject = subjects.run_output(TENANT, rejected)
    async with asyncio.timeout(10):
        async for env in platform.bus.replay(
            RUN_OUT.name, subject, RunOutput, until=lambda b: isinstance(b, TERMINAL_OUTPUTS)
        ):
            last = env.body
    assert isinstance(last, RunFailed) and last.error.code == "conflict"
    gate.opened.set()
    first, second = await platform.turns(conversation_id, 2)
    assert isinstance(first, TurnFailed) and first.run_id == rejected  # the rejection is announced at once
    assert isinstance(second, TurnCompleted)
    assert [m.content for m in (await platform.messages(conversation_id)).messages if m.role is Role.USER] == ["first"]


async def test_interrupt_policy_cancels_the_running_turn_and_runs_the_new_one(start: Callable[..., Any]) -> None:
    started = asyncio.Event()

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        if prompts_of(messages)[-1] == "first":
            started.set()
            yield "long answer "
            await asyncio.Event().wait()  # until cancelled
        yield "quick answer"

    platform: Platform = await start(FunctionModel(stream_function=stream))
    conversation_id = await platform.create(policy=Policy.INTERRUPT)
    first = await platform.post(conversation_id, "first")
    async with asyncio.timeout(10):
        await started.wait()
    second = await platform.post(conversation_id, "second")
    events = {e.run_id: e for e in await platform.turns(conversation_id, 2)}
    assert isinstance(events[first], TurnFailed)
    done = events[second]
    assert isinstance(done, TurnCompleted) and done.message.content == "quick answer"


async def test_enqueue_policy_queues_and_reports_the_position(start: Callable[..., Any]) -> None:
    gate = Gate(["a "], ["b"])
    platform: Platform = await start(gate.model())
    conversation_id = await platform.create()
    await platform.post(conversation_id, "first")
    async with asyncio.timeout(10):
        await gate.reached.wait()
    await platform.post(conversation_id, "second")
    await platform.post(conversation_id, "third")
    view = await platform.request("get", GetConversation(conversation_id=conversation_id), ConversationView)
    for _ in range(50):
        if view.conversation.queued_runs == 2:
            break
        await asyncio.sleep(0.05)
        view = await platform.request("get", GetConversation(conversation_id=conversation_id), ConversationView)
    assert view.conversation.queued_runs == 2 and view.conversation.active_run_id is not None
    gate.opened.set()
    assert all(isinstance(e, TurnCompleted) for e in await platform.turns(conversation_id, 3))


async def test_a_redelivered_post_creates_nothing_twice(start: Callable[..., Any]) -> None:
    calls: list[int] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> str:
        calls.append(1)
        return "once"

    platform: Platform = await start(replying(model))
    conversation_id = await platform.create()
    run_id = new_id()
    await platform.post(conversation_id, "hello", run_id=run_id, msg_id="a")
    await platform.post(conversation_id, "hello", run_id=run_id, msg_id="b")  # not deduped by the bus
    await platform.post(conversation_id, "after")
    events = await platform.turns(conversation_id, 2)
    assert events[0].run_id == run_id and len({e.run_id for e in events}) == 2
    assert len(calls) == 2
    assert [m.role for m in (await platform.messages(conversation_id)).messages] == [Role.USER, Role.ASSISTANT] * 2


async def test_unknown_conversation_fails_the_run_with_not_found(start: Callable[..., Any]) -> None:
    platform: Platform = await start(replying(echo))
    run_id = await platform.post("nope", "hello")
    async with asyncio.timeout(10):
        async for env in platform.bus.replay(RUN_OUT.name, subjects.run_output(TENANT, run_id), RunOutput):
            assert isinstance(env.body, RunFailed) and env.body.error.code == "not_found"
            break


async def test_sidekick_turn_sees_the_latest_context(start: Callable[..., Any]) -> None:
    instructions: list[str] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> str:
        instructions.append(info.instructions or "")
        return "ok"

    platform: Platform = await start(replying(model))
    conversation_id = await platform.create(pattern=Pattern.SIDEKICK, context={"page": "home"})
    await platform.post(conversation_id, "where am I?")
    await platform.turns(conversation_id, 1)
    new_context = SetContext(conversation_id=conversation_id, context={"page": "invoice 42"})
    await platform.request("context", new_context, ConversationView)
    await platform.post(conversation_id, "and now?")
    await platform.turns(conversation_id, 2)
    assert '"home"' in instructions[0] and '"invoice 42"' in instructions[1] and '"home"' not in instructions[1]


async def test_continue_starts_a_new_thread_from_the_history(start: Callable[..., Any]) -> None:
    seen: list[list[str]] = []

    def model(messages: list[ModelMessage], info: AgentInfo) -> str:
        seen.append(prompts_of(messages))
        return "ok"

    platform: Platform = await start(replying(model))
    parent = await platform.create()
    await platform.post(parent, "one")
    await platform.turns(parent, 1)
    child = new_id()
    cont = ContinueConversation(conversation_id=parent, new_conversation_id=child)
    view = await platform.request("continue", cont, ConversationView)
    assert view.conversation.parent_id == parent
    await platform.post(child, "two")
    await platform.turns(child, 1)
    assert seen[-1] == ["one", "two"]
    assert [m.content.strip() for m in (await platform.messages(child)).messages] == ["one", "ok", "two", "ok"]
    assert len((await platform.messages(parent)).messages) == 2


async def test_malformed_command_is_dead_lettered_and_the_actor_keeps_serving(start: Callable[..., Any]) -> None:
    platform: Platform = await start(replying(echo))
    conversation_id = await platform.create()
    sub = await platform.bus.js.subscribe(subjects.dead_letter(subjects.ActorName.CONVERSATION), stream=DLQ.name)
    subject = subjects.conversation_command(TENANT, conversation_id)
    await platform.bus.js.publish(subject, b"not json at all", headers=TRACE.headers())
    dead = await sub.next_msg(timeout=10)
    assert dead.data == b"not json at all" and "undecodable" in (dead.headers or {})[Header.DEAD_REASON.value]
    await platform.post(conversation_id, "still there?")
    assert isinstance((await platform.turns(conversation_id, 1))[0], TurnCompleted)


@pytest.mark.timeout(120)
async def test_kill_9_of_the_executor_mid_turn_stores_exactly_one_reply(
    bus_config: BusConfig, database_url: str, spawn_actor: Callable[..., Any]
) -> None:
    conversation = ConversationActor(bus_config, ConversationConfig(database_url=database_url))
    env = {"AGENTBUS_MODEL": "function:tests.models:slow"}
    async with running(conversation):
        bus = await Bus.connect(bus_config)
        platform = Platform(bus)
        try:
            first = spawn_actor("executor", env)
            conversation_id = await platform.create()
            run_id = await platform.post(conversation_id, "tell me a story")
            async with asyncio.timeout(30):
                async for env_ in bus.replay(RUN_OUT.name, subjects.run_output(TENANT, run_id), RunOutput):
                    if isinstance(env_.body, TextDelta):
                        break
            first.kill()
            spawn_actor("executor", env)
            (event,) = await platform.turns(conversation_id, 1, timeout=60)
            assert isinstance(event, TurnCompleted)
            assert event.message.content == "".join(f"w{i} " for i in range(40))
            listed = (await platform.messages(conversation_id)).messages
            assert [m.role for m in listed] == [Role.USER, Role.ASSISTANT]
        finally:
            await bus.close()
