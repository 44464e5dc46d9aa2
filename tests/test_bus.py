"""The bus runtime against a real nats-server: dead letters, retries, drain, micro services."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, ClassVar

from nats.aio.msg import Msg

from bus import subjects
from bus.actor import Actor, Consumer, Delivery, Endpoint
from bus.client import Bus
from bus.config import BusConfig
from bus.credentials import Role
from bus.errors import Retry
from bus.headers import Header, Trace
from bus.streams import CONVERSATION_CMD, CONVERSATION_EVT, DLQ, ConsumerSpec
from bus.tasks import cancel_and_wait
from schemas._base import Message
from schemas.conversation import ConversationCommand, GetConversation, PostMessage
from schemas.health import HealthCheck, HealthReport
from tests.conftest import running, wait_until

SPEC = ConsumerSpec(CONVERSATION_CMD, "test-echo", subjects.conversation_commands())


class EchoActor(Actor):
    name: ClassVar[subjects.ActorName] = subjects.ActorName.CONVERSATION
    role: ClassVar[Role | None] = Role.ADMIN  # a test of the Actor base, free of the conversation role's limits

    def __init__(self, config: BusConfig) -> None:
        super().__init__(config)
        self.seen: list[tuple[str, Trace]] = []
        self.fail_first = 0

    def routes(self) -> Sequence[Consumer[Any] | Endpoint[Any]]:
        return [Consumer(SPEC, ConversationCommand, self.handle), Endpoint("get", GetConversation, self.get)]

    async def handle(self, message: ConversationCommand, delivery: Delivery) -> None:
        if self.fail_first > 0:
            self.fail_first -= 1
            raise Retry("not yet", delay=0.05)
        assert isinstance(message, PostMessage)
        self.seen.append((message.content, delivery.trace))

    async def get(self, request: GetConversation, trace: Trace) -> Message:
        return HealthReport(actor="echo", instance=request.conversation_id, ok=True, checks={"tenant": trace.tenant})


def post(content: str) -> PostMessage:
    return PostMessage(conversation_id="c1", message_id=content, run_id=content, content=content)


async def test_malformed_message_goes_to_dead_letters_and_actor_keeps_serving(bus_config: BusConfig) -> None:
    actor = EchoActor(bus_config)
    async with running(actor):
        bus = await Bus.connect(bus_config)
        trace = Trace(tenant="acme")
        subject = subjects.conversation_command("acme", "c1")
        await bus.js.publish(subject, b'{"type":"nonsense"}', headers=trace.headers())
        await bus.publish(subjects.conversation_command("acme", "c1"), post("hello"), trace=trace)

        async def served() -> bool:
            return [c for c, _ in actor.seen] == ["hello"]

        await wait_until(served, what="the good message after the bad one")
        dead = await bus.js.get_last_msg(DLQ.name, subjects.dead_letter(subjects.ActorName.CONVERSATION))
        assert dead.data == b'{"type":"nonsense"}'
        assert dead.headers is not None
        assert "undecodable" in dead.headers[Header.DEAD_REASON]
        assert dead.headers[Header.DEAD_SUBJECT] == subjects.conversation_command("acme", "c1")
        assert dead.headers[Header.CORRELATION_ID] == trace.correlation_id
        await bus.close()


async def test_retry_redelivers_and_headers_are_carried(bus_config: BusConfig) -> None:
    actor = EchoActor(bus_config)
    actor.fail_first = 2
    async with running(actor):
        bus = await Bus.connect(bus_config)
        trace = Trace(tenant="acme")
        await bus.publish(subjects.conversation_command("acme", "c1"), post("again"), trace=trace, msg_id="m-1")
        # the same Nats-Msg-Id again is deduplicated by JetStream
        await bus.publish(subjects.conversation_command("acme", "c1"), post("again"), trace=trace, msg_id="m-1")

        async def served() -> bool:
            return len(actor.seen) >= 1

        await wait_until(served, what="redelivery after Retry")
        await asyncio.sleep(0.3)
        assert [c for c, _ in actor.seen] == ["again"]
        seen_trace = actor.seen[0][1]
        assert seen_trace.tenant == "acme"
        assert seen_trace.correlation_id == trace.correlation_id
        assert seen_trace.traceparent.split("-")[1] == trace.traceparent.split("-")[1]
        await bus.close()


async def test_endpoints_answer_and_micro_ping_sees_the_actor(bus_config: BusConfig) -> None:
    actor = EchoActor(bus_config)
    async with running(actor):
        bus = await Bus.connect(bus_config)
        reply = await bus.request(
            subjects.service(subjects.ActorName.CONVERSATION, "get"),
            GetConversation(conversation_id="x"),
            HealthReport,
            trace=Trace(tenant="t9"),
        )
        assert reply.checks == {"tenant": "t9"}
        health_subject = subjects.service(subjects.ActorName.CONVERSATION, "health")
        health = await bus.request(health_subject, HealthCheck(), HealthReport, trace=Trace(tenant=""))
        assert health.ok
        ping = await bus.nc.request("$SRV.PING.agentbus-conversation", b"", timeout=2)
        assert b"agentbus-conversation" in ping.data
        await bus.close()


async def test_a_late_pull_status_does_not_hold_the_next_message(bus_config: BusConfig) -> None:
    """Under load a pull's `408 Request Timeout` can arrive after the client gave up on it and made
    a new pull. nats-py's fetch(batch>1) took that stale status as the answer to its new pull, sent
    a long pull for the whole batch and then held the first message that came until the batch
    filled or a pull expired: the multi-second stalls of issue 9. Here the stale status is sent on
    purpose, right after the consumer's pull request; the next message must still arrive at once."""
    actor = EchoActor(bus_config)
    bus = await Bus.connect(bus_config)
    pulls: asyncio.Queue[str] = asyncio.Queue()

    async def seen_pull(msg: Msg) -> None:
        pulls.put_nowait(msg.reply)

    await bus.nc.subscribe(subjects.consumer_next(CONVERSATION_CMD.name, SPEC.durable), cb=seen_pull)
    await bus.barrier()
    async with running(actor):
        trace = Trace(tenant="acme")
        for i in range(3):
            await asyncio.sleep(0.3)
            while not pulls.empty():
                inbox = pulls.get_nowait()
                await bus.nc.publish(inbox, b"", headers={"Status": "408", "Description": "Request Timeout"})
            await asyncio.sleep(0.2)
            await bus.publish(subjects.conversation_command("acme", "c1"), post(f"m{i}"), trace=trace)

            async def served(count: int = i + 1) -> bool:
                return len(actor.seen) == count

            # far above a healthy hop (~1 ms) and far below the stall (until a 5 s pull expires)
            await wait_until(served, timeout=2.0, what=f"message {i} handed over without waiting for a batch")
    await bus.close()


async def test_consumers_added_and_removed_at_run_time(bus_config: BusConfig) -> None:
    actor = EchoActor(bus_config)
    extra: list[str] = []

    async def handle(message: ConversationCommand, delivery: Delivery) -> None:
        assert isinstance(message, PostMessage)
        extra.append(message.content)

    spec = ConsumerSpec(CONVERSATION_EVT, "test-extra", subjects.conversation_event("acme", "c2", "posted"))
    async with running(actor):
        bus = await Bus.connect(bus_config)
        trace = Trace(tenant="acme")
        await actor.add_consumer(Consumer(spec, ConversationCommand, handle))
        await bus.publish(subjects.conversation_event("acme", "c2", "posted"), post("extra"), trace=trace)

        async def served() -> bool:
            return extra == ["extra"]

        await wait_until(served, what="the added consumer's message")
        await actor.remove_consumer(spec.durable, delete_from=CONVERSATION_EVT.name)
        assert spec.durable not in [c.name for c in await bus.js.consumers_info(CONVERSATION_EVT.name)]
        await bus.close()


async def test_cancel_and_wait_ends_a_task_that_swallowed_a_cancel() -> None:
    """Python 3.11's wait_for (inside nats-py) can swallow a cancel; a single cancel then waits forever."""
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.set()  # as wait_for does when the awaited future completed meanwhile
        await asyncio.sleep(3600)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await cancel_and_wait(task)
    assert swallowed.is_set() and task.cancelled()
