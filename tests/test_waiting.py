"""A message that waits (Retry with `waiting`) is redelivered for as long as it waits, and its waits are
not counted toward dead-lettering it (a real nats-server)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from bus import subjects
from bus.actor import Actor, Consumer, Delivery, Endpoint
from bus.client import Bus
from bus.config import BusConfig
from bus.errors import Retry
from bus.headers import Trace
from bus.streams import CONVERSATION_CMD, DLQ, ConsumerSpec
from schemas.conversation import ConversationCommand, PostMessage
from tests.conftest import running, wait_until

SPEC = ConsumerSpec(CONVERSATION_CMD, "test-waiting", subjects.conversation_commands())
WAITS = 8  # more than max_deliver (5)


class WaitingActor(Actor):
    """Waits WAITS times (as a run waits for a model), then fails once unexpectedly, then succeeds."""

    name: ClassVar[subjects.ActorName] = subjects.ActorName.CONVERSATION

    def __init__(self, config: BusConfig) -> None:
        super().__init__(config)
        self.deliveries: list[int] = []
        self.done = False

    def routes(self) -> Sequence[Consumer[Any] | Endpoint[Any]]:
        return [Consumer(SPEC, ConversationCommand, self.handle)]

    async def handle(self, message: ConversationCommand, delivery: Delivery) -> None:
        self.deliveries.append(delivery.num_delivered)
        if len(self.deliveries) <= WAITS:
            raise Retry("waiting for a model", delay=0.02, waiting=True)
        if len(self.deliveries) == WAITS + 1:
            raise RuntimeError("a blip after the wait")
        self.done = True


async def test_waiting_deliveries_do_not_count_toward_dead_lettering(bus_config: BusConfig) -> None:
    assert bus_config.max_deliver < WAITS + 1
    actor = WaitingActor(bus_config)
    async with running(actor):
        bus = await Bus.connect(bus_config)
        message = PostMessage(conversation_id="c1", message_id="m1", run_id="r1", content="hi")
        await bus.publish(subjects.conversation_command("acme", "c1"), message, trace=Trace(tenant="acme"))

        async def handled() -> bool:
            return actor.done

        await wait_until(handled, timeout=20, what="the message to be handled after its waits and one failure")
        dead = await bus.js.stream_info(DLQ.name)
        await bus.close()
    assert actor.deliveries == list(range(1, WAITS + 3)) and dead.state.messages == 0
