"""The conversation actor against a real nats-server and PostgreSQL; the test plays the executor.

`FakeExecutor` pulls RunRequests from AB_EXECUTOR_CMD and answers with RunFinished carrying real
pydantic-ai JSON, so every turn's timing is in the test's hands.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
import pytest
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    TextPart,
    UserPromptPart,
)

from actors.conversation.actor import ConversationActor
from actors.conversation.config import ConversationConfig
from bus import subjects
from bus.client import Bus
from bus.codec import decode, encode
from bus.config import BusConfig
from bus.errors import BusError
from bus.headers import Header, Trace, new_id
from bus.streams import CONVERSATION_EVT, DLQ, EXECUTOR_CMD, EXECUTOR_EVT, RUN_OUT
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
    StoredMessage,
    TurnCompleted,
    TurnFailed,
)
from schemas.errors import ErrorCode, ErrorReply
from schemas.health import HealthCheck, HealthReport
from schemas.runs import (
    CancelRun,
    RunAccepted,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunFinished,
    RunOutput,
    RunRecord,
    RunRequest,
    RunStatus,
    RunView,
    TextDelta,
)
from tests.conftest import running, wait_until
from tests.models import prompts_of

TENANT = "acme"
TRACE = Trace(tenant=TENANT)
Turn = TurnCompleted | TurnFailed


def history_of(request: RunRequest) -> list[ModelMessage]:
    return ModelMessagesTypeAdapter.validate_json(bytes(request.history))


class Client:
    """The conversation actor's callers: queries, commands, and reading what it publishes."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.seqs: dict[str, int] = {}  # run id -> the stream sequence its PostMessage got

    async def request(self, verb: str, message: Any, reply: type[Any], tenant: str = TENANT) -> Any:
        service = subjects.service(subjects.ActorName.CONVERSATION, verb)
        return await self.bus.request(service, message, reply, trace=Trace(tenant=tenant))

    async def create(self, **fields: Any) -> str:
        conversation_id = new_id()
        await self.request("create", CreateConversation(conversation_id=conversation_id, **fields), ConversationView)
        return conversation_id

    async def view(self, conversation_id: str) -> ConversationView:
        result: ConversationView = await self.request(
            "get", GetConversation(conversation_id=conversation_id), ConversationView
        )
        return result

    async def post(
        self, conversation_id: str, content: str, *, run_id: str | None = None, msg_id: str | None = None
    ) -> str:
        run_id = run_id or new_id()
        message = PostMessage(conversation_id=conversation_id, message_id=f"m-{run_id}", run_id=run_id, content=content)
        subject = subjects.conversation_command(TENANT, conversation_id)
        self.seqs[run_id] = await self.bus.publish(subject, message, trace=TRACE, msg_id=msg_id or run_id)
        return run_id

    async def turns(self, conversation_id: str, count: int, timeout: float = 15.0) -> list[Turn]:
        """The first `count` turn events of the conversation."""
        seen: list[Turn] = []
        subject = subjects.conversation_event(TENANT, conversation_id, "turn")
        async with asyncio.timeout(timeout):
            async for env in self.bus.replay(CONVERSATION_EVT.name, subject, Turn):
                seen.append(env.body)
                if len(seen) == count:
                    break
        return seen

    async def output(self, run_id: str, timeout: float = 10.0) -> Any:
        """The first message on the run's output."""
        async with asyncio.timeout(timeout):
            async for env in self.bus.replay(RUN_OUT.name, subjects.run_output(TENANT, run_id), RunOutput):
                return env.body
        raise AssertionError("unreachable")

    async def results_handled(self) -> None:
        """Wait until the actor has handled every RunFinished published so far."""

        async def handled() -> bool:
            info = await self.bus.js.consumer_info(EXECUTOR_EVT.name, "conversation-runs")
            return bool(info.num_pending == 0 and info.num_ack_pending == 0)

        await wait_until(handled, what="every run result handled")

    async def messages(self, conversation_id: str) -> list[StoredMessage]:
        listed: MessageList = await self.request("messages", ListMessages(conversation_id=conversation_id), MessageList)
        return listed.messages


class FakeExecutor:
    """Pulls RunRequests from the executor's work queue and finishes them as the test says."""

    def __init__(self, bus: Bus, sub: JetStreamContext.PullSubscription) -> None:
        self.bus = bus
        self.sub = sub
        self.requests: dict[str, RunRequest] = {}
        self.cancels: list[str] = []

    @classmethod
    async def attach(cls, bus: Bus) -> FakeExecutor:
        sub = await bus.js.pull_subscribe(
            subjects.executor_commands(), durable="fake-executor", stream=EXECUTOR_CMD.name
        )
        return cls(bus, sub)

    async def next(self, timeout: float = 10.0) -> RunRequest:
        (msg,) = await self.sub.fetch(1, timeout=timeout)
        await msg.ack()
        request = decode(msg.data, RunRequest)
        self.requests[request.run_id] = request
        return request

    async def idle(self, seconds: float = 0.2) -> None:
        """Fail if a RunRequest arrives within `seconds`."""
        try:
            msgs = await self.sub.fetch(1, timeout=seconds)
        except (NatsTimeoutError, TimeoutError):
            return
        raise AssertionError(f"unexpected run request: {msgs[0].data!r}")

    async def complete(self, request: RunRequest, output: str, *, msg_id: str | None = None) -> None:
        turn: list[ModelMessage] = [
            ModelRequest(parts=[UserPromptPart(content=request.prompt)]),
            ModelResponse(parts=[TextPart(output)]),
        ]
        new_messages = msgspec.Raw(ModelMessagesTypeAdapter.dump_json(turn))
        result = RunCompleted(
            run_id=request.run_id, output=output, new_messages=new_messages, model="fake-model", offline=True
        )
        await self.finish(request.run_id, result, msg_id=msg_id)

    async def finish(
        self, run_id: str, result: RunCompleted | RunFailed | RunCancelled, *, msg_id: str | None = None
    ) -> None:
        request = self.requests[run_id]
        finished = RunFinished(run_id=run_id, conversation_id=request.conversation_id, result=result)
        subject = subjects.executor_finished(TENANT, run_id)
        trace = Trace(tenant=TENANT, run_id=run_id)
        await self.bus.publish(subject, finished, trace=trace, msg_id=msg_id or f"{run_id}:finished")

    async def detach(self) -> None:
        """Drop the pull subscription (a pending fetch would hold up the connection's drain)."""
        await self.sub.unsubscribe()

    async def answer_cancels(self) -> None:
        """Answer `service(EXECUTOR, "cancel")` with a RunView, then end the run as cancelled."""

        async def on_cancel(msg: Msg) -> None:
            cancel = decode(msg.data, CancelRun)
            record = RunRecord(
                id=cancel.run_id,
                tenant=TENANT,
                agent="assistant",
                model="fake-model",
                status=RunStatus.CANCELLED,
                created_at=datetime.now(UTC),
            )
            await msg.respond(encode(RunView(run=record)))
            self.cancels.append(cancel.run_id)
            await self.finish(cancel.run_id, RunCancelled(run_id=cancel.run_id, reason=cancel.reason))

        await self.bus.nc.subscribe(subjects.service(subjects.ActorName.EXECUTOR, "cancel"), cb=on_cancel)
        await self.bus.barrier()


Start = Callable[..., Awaitable[tuple[Client, FakeExecutor]]]


@pytest.fixture
async def start(bus_config: BusConfig, database_url: str) -> AsyncIterator[Start]:
    """start(replicas=1) -> (client, fake executor), with that many conversation actors running."""
    stack: list[Any] = []

    async def start_actors(replicas: int = 1, max_deliver: int | None = None) -> tuple[Client, FakeExecutor]:
        config = bus_config if max_deliver is None else dataclasses.replace(bus_config, max_deliver=max_deliver)
        actors = [ConversationActor(config, ConversationConfig(database_url=database_url)) for _ in range(replicas)]
        ctx = running(*actors)
        await ctx.__aenter__()
        stack.append(ctx)
        bus = await Bus.connect(bus_config)
        stack.append(bus)
        executor = await FakeExecutor.attach(bus)
        stack.append(executor)
        return Client(bus), executor

    yield start_actors
    for item in reversed(stack):
        if isinstance(item, FakeExecutor):
            await item.detach()
        elif isinstance(item, Bus):
            await item.close()
        else:
            await item.__aexit__(None, None, None)


async def test_create_get_and_another_tenant_sees_not_found(start: Start) -> None:
    client, _ = await start()
    conversation_id = await client.create(pattern=Pattern.SIDEKICK, context={"page": "home"}, policy=Policy.REJECT)
    view = (await client.view(conversation_id)).conversation
    assert (view.tenant, view.pattern, view.agent, view.policy) == (
        TENANT,
        Pattern.SIDEKICK,
        "assistant",
        Policy.REJECT,
    )
    assert view.context == {"page": "home"} and view.active_run_id is None and view.queued_runs == 0
    again = CreateConversation(conversation_id=conversation_id, agent="other")
    recreated = await client.request("create", again, ConversationView)
    assert recreated.conversation == view  # idempotent: the existing one, unchanged
    other_tenant: list[tuple[str, Any, type[Any]]] = [
        ("get", GetConversation(conversation_id=conversation_id), ConversationView),
        ("messages", ListMessages(conversation_id=conversation_id), MessageList),
        ("context", SetContext(conversation_id=conversation_id, context={}), ConversationView),
        ("continue", ContinueConversation(conversation_id=conversation_id, new_conversation_id="x"), ConversationView),
    ]
    for verb, query, reply in other_tenant:
        with pytest.raises(BusError) as caught:
            await client.request(verb, query, reply, tenant="other")
        assert caught.value.code is ErrorCode.NOT_FOUND, verb
    with pytest.raises(BusError) as caught:
        await client.view("no-such-conversation")
    assert caught.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(BusError) as caught:
        await client.request("create", CreateConversation(conversation_id="a.b"), ConversationView)
    assert caught.value.code is ErrorCode.INVALID
    health = await client.request("health", HealthCheck(), HealthReport)
    assert health.ok and health.checks == {"postgres": "ok"}


async def test_a_turn_stores_both_messages_and_the_next_request_carries_its_history(start: Start) -> None:
    client, executor = await start()
    conversation_id = await client.create()
    first_run = await client.post(conversation_id, "first")
    first = await executor.next()
    assert (first.run_id, first.prompt, first.agent) == (first_run, "first", "assistant")
    assert first.conversation_id == conversation_id and first.context is None and history_of(first) == []
    accepted = await client.output(first_run)
    assert isinstance(accepted, RunAccepted) and accepted.position == 0
    await executor.complete(first, "reply one")
    (done,) = await client.turns(conversation_id, 1)
    assert isinstance(done, TurnCompleted) and done.message.content == "reply one"
    assert done.model == "fake-model" and done.offline
    assert done.message.metadata == {"model": "fake-model", "offline": "true"}

    await client.post(conversation_id, "second")
    second = await executor.next()
    history = history_of(second)
    assert prompts_of(history) == ["first"]
    assert isinstance(history[-1], ModelResponse) and history[-1].parts == [TextPart("reply one")]
    listed = await client.messages(conversation_id)
    assert [(m.role, m.content) for m in listed] == [
        (Role.USER, "first"), (Role.ASSISTANT, "reply one"), (Role.USER, "second"),
    ]  # fmt: skip
    assert listed[0].id == f"m-{first_run}" and listed[1].run_id == first_run


async def test_two_replicas_start_a_burst_of_turns_one_at_a_time_in_post_order(start: Start) -> None:
    client, executor = await start(replicas=2)
    conversation_id = await client.create()
    texts = [f"m{i}" for i in range(20)]
    posted = await asyncio.gather(*(client.post(conversation_id, text) for text in texts))  # all at once
    runs = sorted(posted, key=client.seqs.__getitem__)  # post order: the order the stream took them in
    sent = [texts[posted.index(run_id)] for run_id in runs]

    async def all_queued() -> bool:
        view = (await client.view(conversation_id)).conversation
        return view.active_run_id == runs[0] and view.queued_runs == 19

    await wait_until(all_queued, what="19 turns queued behind the first")
    for i, text in enumerate(sent):
        request = await executor.next()
        assert (request.prompt, request.run_id) == (text, runs[i])
        assert prompts_of(history_of(request)) == sent[:i]  # each turn sees exactly the turns before it
        await executor.idle(0.1)  # one at a time
        await executor.complete(request, f"re {text}")
    events = await client.turns(conversation_id, 20)
    assert [e.run_id for e in events] == runs and all(isinstance(e, TurnCompleted) for e in events)
    users = [m.content for m in await client.messages(conversation_id) if m.role is Role.USER]
    assert users == sent


async def test_enqueue_reports_how_many_turns_are_ahead(start: Start) -> None:
    client, executor = await start()
    conversation_id = await client.create()
    runs = [await client.post(conversation_id, text) for text in ("a", "b", "c")]
    positions = [await client.output(run_id) for run_id in runs]
    assert [p.position for p in positions if isinstance(p, RunAccepted)] == [0, 1, 2]
    for run_id in runs:
        request = await executor.next()
        assert request.run_id == run_id
        await executor.complete(request, "ok")


async def test_reject_policy_fails_a_message_while_a_turn_runs_even_when_redelivered(start: Start) -> None:
    client, executor = await start()
    conversation_id = await client.create(policy=Policy.REJECT)
    await client.post(conversation_id, "first")
    first = await executor.next()
    rejected = await client.post(conversation_id, "second")
    failure = await client.output(rejected)
    assert isinstance(failure, RunFailed) and failure.error.code is ErrorCode.CONFLICT
    assert failure.error.details == {"active_run_id": first.run_id}
    (turn,) = await client.turns(conversation_id, 1)
    assert isinstance(turn, TurnFailed) and turn.run_id == rejected and turn.error.code is ErrorCode.CONFLICT
    await executor.complete(first, "done")
    await client.turns(conversation_id, 2)
    await client.post(conversation_id, "second", run_id=rejected, msg_id="redelivered")  # refused again
    third = await client.post(conversation_id, "third")
    assert (await executor.next()).run_id == third
    users = [m.content for m in await client.messages(conversation_id) if m.role is Role.USER]
    assert users == ["first", "third"]


async def test_interrupt_cancels_the_running_turn_then_starts_the_new_one(start: Start) -> None:
    client, executor = await start()
    await executor.answer_cancels()
    conversation_id = await client.create(policy=Policy.INTERRUPT)
    await client.post(conversation_id, "first")
    first = await executor.next()
    second_run = await client.post(conversation_id, "second")
    accepted = await client.output(second_run)
    assert isinstance(accepted, RunAccepted) and accepted.position == 1
    second = await executor.next()
    assert second.run_id == second_run and executor.cancels == [first.run_id]
    assert history_of(second) == []  # a cancelled turn leaves no history
    (cancelled,) = await client.turns(conversation_id, 1)
    assert isinstance(cancelled, TurnFailed) and cancelled.run_id == first.run_id
    await executor.complete(second, "quick answer")
    await client.turns(conversation_id, 2)
    assert [(m.role, m.content) for m in await client.messages(conversation_id)] == [
        (Role.USER, "first"), (Role.USER, "second"), (Role.ASSISTANT, "quick answer"),
    ]  # fmt: skip


async def test_a_failed_turn_keeps_the_message_but_adds_no_history(start: Start) -> None:
    client, executor = await start()
    conversation_id = await client.create()
    await client.post(conversation_id, "first")
    first = await executor.next()
    error = ErrorReply(code=ErrorCode.INTERNAL, message="model down")
    await executor.finish(first.run_id, RunFailed(run_id=first.run_id, error=error))
    (failed,) = await client.turns(conversation_id, 1)
    assert isinstance(failed, TurnFailed) and failed.error == error
    await client.post(conversation_id, "second")
    assert history_of(await executor.next()) == []
    assert [m.content for m in await client.messages(conversation_id)] == ["first", "second"]


async def test_a_turn_whose_end_cannot_be_stored_fails_with_the_reason_and_the_next_turn_runs(
    start: Start, database_url: str
) -> None:
    """A dead-lettered result ends its turn visibly: PostgreSQL refuses to store the reply, the
    RunFinished is dead-lettered, and the turn ends failed ("gave up: ...") instead of staying the
    conversation's running turn forever and holding every later one back."""
    client, executor = await start(max_deliver=2)
    db = await asyncpg.connect(database_url)
    await db.execute(
        """
        CREATE FUNCTION conversation.refuse_doomed() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'disk full'; END $$;
        CREATE TRIGGER refuse_doomed BEFORE UPDATE ON conversation.turns FOR EACH ROW
        WHEN (NEW.status = 'completed' AND NEW.prompt = 'doomed') EXECUTE FUNCTION conversation.refuse_doomed();
        """
    )
    await db.close()
    conversation_id = await client.create()
    await client.post(conversation_id, "doomed")
    await executor.complete(await executor.next(), "never stored")
    (failed,) = await client.turns(conversation_id, 1)
    assert isinstance(failed, TurnFailed) and failed.error.message.startswith("gave up:")
    await client.post(conversation_id, "second")
    assert (await executor.next()).prompt == "second"


async def test_redelivered_commands_and_results_change_nothing(start: Start) -> None:
    client, executor = await start()
    conversation_id = await client.create()
    run_id = new_id()
    await client.post(conversation_id, "hello", run_id=run_id, msg_id="a")
    await client.post(conversation_id, "hello", run_id=run_id, msg_id="b")  # not deduped by the bus
    request = await executor.next()
    await executor.idle()
    await executor.complete(request, "once")
    await executor.complete(request, "once", msg_id="again")  # an executor's redelivered RunFinished
    await client.post(conversation_id, "after")
    after = await executor.next()
    assert prompts_of(history_of(after)) == ["hello"]
    await executor.complete(after, "twice")
    events = await client.turns(conversation_id, 2)
    await client.results_handled()
    assert [e.run_id for e in events] == [run_id, after.run_id]
    assert [m.role for m in await client.messages(conversation_id)] == [Role.USER, Role.ASSISTANT] * 2


async def test_unknown_conversation_fails_the_run_with_not_found(start: Start) -> None:
    client, executor = await start()
    run_id = await client.post("nope", "hello")
    failure = await client.output(run_id)
    assert isinstance(failure, RunFailed) and failure.error.code is ErrorCode.NOT_FOUND
    (turn,) = await client.turns("nope", 1)
    assert isinstance(turn, TurnFailed) and turn.error.code is ErrorCode.NOT_FOUND
    await executor.idle()


async def test_sidekick_context_set_by_command_or_query_reaches_the_next_request(start: Start) -> None:
    client, executor = await start()
    conversation_id = await client.create(pattern=Pattern.SIDEKICK, context={"page": "home"})
    command = SetContext(conversation_id=conversation_id, context={"page": "cart"})
    await client.bus.publish(subjects.conversation_command(TENANT, conversation_id), command, trace=TRACE)
    await client.post(conversation_id, "where am I?")  # applied after the SetContext before it
    first = await executor.next()
    assert first.context == {"page": "cart"}
    await executor.complete(first, "the cart")
    query = SetContext(conversation_id=conversation_id, context={"page": "invoice 42"})
    view = await client.request("context", query, ConversationView)
    assert view.conversation.context == {"page": "invoice 42"}
    await client.post(conversation_id, "and now?")
    assert (await executor.next()).context == {"page": "invoice 42"}


async def test_malformed_command_is_dead_lettered_and_the_actor_keeps_serving(start: Start) -> None:
    client, executor = await start()
    conversation_id = await client.create()
    dlq = await client.bus.js.subscribe(subjects.dead_letter(subjects.ActorName.CONVERSATION), stream=DLQ.name)
    subject = subjects.conversation_command(TENANT, conversation_id)
    await client.bus.js.publish(subject, b"not json at all", headers=TRACE.headers())
    dead = await dlq.next_msg(timeout=10)
    headers = dead.headers or {}
    assert dead.data == b"not json at all" and "undecodable" in headers[Header.DEAD_REASON.value]
    assert headers[Header.DEAD_SUBJECT.value] == subject
    await client.post(conversation_id, "still there?")
    assert (await executor.next()).prompt == "still there?"


async def test_continue_starts_a_new_conversation_from_the_history(start: Start) -> None:
    client, executor = await start()
    parent = await client.create(pattern=Pattern.SIDEKICK, context={"k": 1}, agent="helper")
    await client.post(parent, "one")
    await executor.complete(await executor.next(), "reply one")
    await client.turns(parent, 1)
    child = new_id()
    cont = ContinueConversation(conversation_id=parent, new_conversation_id=child)
    view = (await client.request("continue", cont, ConversationView)).conversation
    assert (view.id, view.parent_id, view.agent, view.context) == (child, parent, "helper", {"k": 1})
    assert (await client.request("continue", cont, ConversationView)).conversation == view  # idempotent
    await client.post(child, "two")
    request = await executor.next()
    assert request.conversation_id == child and prompts_of(history_of(request)) == ["one"]
    assert [m.content for m in await client.messages(child)] == ["one", "reply one", "two"]
    assert [m.content for m in await client.messages(parent)] == ["one", "reply one"]
    with pytest.raises(BusError) as caught:
        await client.request(
            "continue", ContinueConversation(conversation_id="nope", new_conversation_id="n2"), ConversationView
        )
    assert caught.value.code is ErrorCode.NOT_FOUND


@pytest.mark.timeout(120)
async def test_kill_9_of_a_real_executor_mid_turn_stores_exactly_one_reply(
    bus_config: BusConfig, database_url: str, spawn_actor: Callable[..., Any]
) -> None:
    """End to end, the one test with a real executor (a subprocess, killed mid-run)."""
    conversation = ConversationActor(bus_config, ConversationConfig(database_url=database_url))
    env = {"AGENTBUS_MODEL": "function:tests.models:slow"}
    async with running(conversation):
        bus = await Bus.connect(bus_config)
        client = Client(bus)
        try:
            first = spawn_actor("executor", env)
            conversation_id = await client.create()
            run_id = await client.post(conversation_id, "tell me a story")
            async with asyncio.timeout(30):
                async for env_ in bus.replay(RUN_OUT.name, subjects.run_output(TENANT, run_id), RunOutput):
                    if isinstance(env_.body, TextDelta):
                        break
            first.kill()
            spawn_actor("executor", env)
            (event,) = await client.turns(conversation_id, 1, timeout=60)
            assert isinstance(event, TurnCompleted)
            assert event.message.content == "".join(f"w{i} " for i in range(40))
            assert [m.role for m in await client.messages(conversation_id)] == [Role.USER, Role.ASSISTANT]
        finally:
            await bus.close()
