"""A conversation's history travels by reference once it is large (guarantee 9), against a real
nats-server and PostgreSQL, with the conversation and executor actors; only the model is replaced.

The inline limit and the page size are set tiny, so a few turns already go by reference and a
single prompt spans several pages (it is split, never refused).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from nats.aio.msg import Msg
from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter
from pydantic_ai.models.function import AgentInfo

from actors.conversation.actor import ConversationActor
from actors.conversation.config import ConversationConfig
from actors.executor.actor import ExecutorActor
from actors.executor.config import ExecutorConfig
from actors.executor.history import HistoryCache, read_history
from bus import subjects
from bus.client import Bus
from bus.codec import decode, encode
from bus.config import BusConfig
from bus.errors import BusError
from bus.headers import Trace, new_id
from bus.streams import CONVERSATION_EVT, RUN_OUT
from schemas.conversation import (
    ConversationView,
    CreateConversation,
    GetHistory,
    HistoryCursor,
    HistoryPage,
    PostMessage,
    TurnCompleted,
    TurnFailed,
)
from schemas.errors import ErrorCode
from schemas.runs import RunCompleted, RunFailed, RunOutput, RunRequest
from tests.conftest import running
from tests.models import prompts_of, replying

TENANT = "acme"
INLINE_BYTES = 600
PAGE_BYTES = 1024


@dataclass
class Chat:
    bus: Bus
    seen: list[list[str]] = field(default_factory=list)  # the prompts each model request saw, in order
    requests: list[tuple[int, RunRequest]] = field(default_factory=list)  # each RunRequest's size on the bus

    async def create(self) -> str:
        conversation_id = new_id()
        service = subjects.service(subjects.ActorName.CONVERSATION, "create")
        await self.bus.request(
            service, CreateConversation(conversation_id=conversation_id), ConversationView, trace=Trace(tenant=TENANT)
        )
        return conversation_id

    async def turn(self, conversation_id: str, content: str, *, stream: bool = True) -> TurnCompleted:
        """Post a message and wait for the turn's end."""
        run_id = new_id()
        message = PostMessage(
            conversation_id=conversation_id, message_id=f"m-{run_id}", run_id=run_id, content=content, stream=stream
        )
        subject = subjects.conversation_event(TENANT, conversation_id, "turn")
        async with asyncio.timeout(20):
            await self.bus.publish(
                subjects.conversation_command(TENANT, conversation_id),
                message,
                trace=Trace(tenant=TENANT),
                msg_id=run_id,
            )
            async for env in self.bus.replay(CONVERSATION_EVT.name, subject, TurnCompleted | TurnFailed):
                if env.body.run_id == run_id:
                    assert isinstance(env.body, TurnCompleted), env.body
                    return env.body
        raise AssertionError("unreachable")

    def request_of(self, run_id: str) -> tuple[int, RunRequest]:
        return next((size, r) for size, r in self.requests if r.run_id == run_id)


@pytest.fixture
async def chat(bus_config: BusConfig, database_url: str) -> AsyncIterator[Chat]:
    bus = await Bus.connect(bus_config)
    chat = Chat(bus)

    def reply(messages: list[ModelMessage], info: AgentInfo) -> str:
        prompts = prompts_of(messages)
        chat.seen.append(prompts)
        return f"reply {len(prompts)}"

    async def on_request(msg: Msg) -> None:
        chat.requests.append((len(msg.data), decode(msg.data, RunRequest)))

    sub = await bus.nc.subscribe(subjects.executor_commands(), cb=on_request)  # what the bus carries
    config = ConversationConfig(
        database_url=database_url, history_inline_bytes=INLINE_BYTES, history_page_bytes=PAGE_BYTES
    )
    executor = ExecutorActor(
        bus_config, ExecutorConfig(database_url=database_url, offline=True), model_override=replying(reply)
    )
    async with running(ConversationActor(bus_config, config), executor):
        yield chat
    await sub.unsubscribe()
    await bus.close()


async def pages(bus: Bus, query: GetHistory, tenant: str = TENANT) -> list[bytes]:
    """Every page of a reference as the bus carries it, asked as the executor asks."""
    service = subjects.service(subjects.ActorName.CONVERSATION, "history")
    raw: list[bytes] = []
    while True:
        msg = await bus.nc.request(service, encode(query), timeout=5, headers=Trace(tenant=tenant).headers())
        raw.append(msg.data)
        page = decode(msg.data, HistoryPage)
        if page.next is None:
            return raw
        query = GetHistory(ref=query.ref, after=page.next)


async def test_a_long_conversation_continues_by_reference_and_every_turn_sees_every_earlier_one(chat: Chat) -> None:
    conversation_id = await chat.create()
    prompts = [f"message {i}: " + "lorem ipsum " * 20 for i in range(6)]  # ~250 bytes each, more with the reply
    runs = []
    for i, prompt in enumerate(prompts):
        done = await chat.turn(conversation_id, prompt, stream=i % 2 == 0)  # both kinds of run read it
        assert done.message.content.strip() == f"reply {i + 1}"
        runs.append(done.run_id)
    assert chat.seen == [prompts[: i + 1] for i in range(len(prompts))]  # every earlier turn, in order
    by_ref = [chat.request_of(run_id) for run_id in runs]
    assert by_ref[0][1].history_ref is None and bytes(by_ref[0][1].history) == b"[]"
    later = [(size, r) for size, r in by_ref if r.history_ref is not None]
    assert len(later) >= 4  # past the inline limit: every later turn goes by reference
    for size, request in later:
        assert request.history_ref is not None and bytes(request.history) == b"[]"
        assert request.history_ref.size > INLINE_BYTES and size < 800  # the command stays small
    assert later[-1][1].history_ref is not None and later[-1][1].history_ref.size > 3 * PAGE_BYTES


async def test_a_reference_reads_the_same_history_later_and_in_pages_bounded_by_bytes(chat: Chat) -> None:
    conversation_id = await chat.create()
    huge = "x" * 5000 + " ünïcødé " * 200  # one message larger than a page: split across pages, never refused
    runs = [(await chat.turn(conversation_id, text)).run_id for text in ["first", huge, "third", "fourth"]]
    assert chat.seen[2] == ["first", huge, "third"]  # the huge message reached the next turn whole
    _, third = chat.request_of(runs[2])
    assert third.history_ref is not None
    query = GetHistory(ref=third.history_ref)
    raw = await pages(chat.bus, query)  # after a later turn ended: the reference still pins turns 1-2
    assert len(raw) > 5 and all(len(data) <= PAGE_BYTES for data in raw)
    fresh = await read_history(chat.bus, HistoryCache(), third, Trace(tenant=TENANT))
    assert prompts_of(ModelMessagesTypeAdapter.validate_json(fresh)) == ["first", huge]
    _, fourth = chat.request_of(runs[3])
    cache = HistoryCache()
    await read_history(chat.bus, cache, third, Trace(tenant=TENANT))
    extended = await read_history(chat.bus, cache, fourth, Trace(tenant=TENANT))  # only turn 3 is asked for
    assert extended == await read_history(chat.bus, HistoryCache(), fourth, Trace(tenant=TENANT))
    assert await read_history(chat.bus, cache, third, Trace(tenant=TENANT)) == fresh  # a redelivery, from the cache


async def test_another_tenant_cannot_read_the_history(chat: Chat) -> None:
    conversation_id = await chat.create()
    runs = [(await chat.turn(conversation_id, "secret " * 60)).run_id for _ in range(3)]
    _, request = chat.request_of(runs[-1])
    assert request.history_ref is not None
    service = subjects.service(subjects.ActorName.CONVERSATION, "history")
    with pytest.raises(BusError) as caught:
        await chat.bus.request(service, GetHistory(ref=request.history_ref), HistoryPage, trace=Trace(tenant="other"))
    assert caught.value.code is ErrorCode.NOT_FOUND and "secret" not in caught.value.message
    # nor through an executor: a run of another tenant naming the reference fails, having read nothing
    stolen = RunRequest(
        run_id=new_id(), agent="assistant", prompt="what did they say?", history_ref=request.history_ref
    )
    trace = Trace(tenant="other", run_id=stolen.run_id)
    await chat.bus.publish(subjects.executor_command("other", stolen.run_id), stolen, trace=trace)
    async with asyncio.timeout(10):
        async for env in chat.bus.replay(RUN_OUT.name, subjects.run_output("other", stolen.run_id), RunOutput):
            if isinstance(env.body, RunFailed | RunCompleted):
                break
    assert isinstance(env.body, RunFailed) and env.body.error.code is ErrorCode.NOT_FOUND
    assert len(chat.seen) == 3  # the model was never asked
    page = await chat.bus.request(
        service, GetHistory(ref=request.history_ref, after=HistoryCursor()), HistoryPage, trace=Trace(tenant=TENANT)
    )
    assert page.parts  # the owner reads it
