"""The trigger actor's bus-subject triggers: filter, debounce, per-minute limit, tenant scope.

The test plays the scheduler: it reads FireTask commands from AB_SCHEDULER_CMD and publishes events.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.errors import TimeoutError as NatsTimeoutError

from actors.trigger.actor import TriggerActor, matches
from actors.trigger.config import TriggerActorConfig
from bus import subjects
from bus.client import Bus
from bus.codec import decode
from bus.config import BusConfig
from bus.errors import BusError
from bus.headers import Trace
from bus.streams import SCHEDULER_CMD
from schemas.health import HealthCheck, HealthReport
from schemas.tasks import FireTask, RegisterTrigger, TriggerConfig, TriggerRegistered
from tests.conftest import running

TENANT = "acme"
TRACE = Trace(tenant=TENANT)
SOURCE = f"ab.notifier.evt.{TENANT}.d1.delivered"


class Harness:
    def __init__(self, bus: Bus, sub: Any) -> None:
        self.bus = bus
        self.sub = sub

    async def register(self, task_id: str, config: TriggerConfig, tenant: str = TENANT) -> TriggerRegistered:
        service = subjects.service(subjects.ActorName.TRIGGER, "register")
        reply: TriggerRegistered = await self.bus.request(
            service, RegisterTrigger(task_id=task_id, config=config), TriggerRegistered, trace=Trace(tenant=tenant)
        )
        return reply

    async def emit(self, body: bytes, subject: str = SOURCE) -> None:
        await self.bus.js.publish(subject, body, headers=TRACE.headers())

    async def fired(self, wait: float = 2.0) -> list[FireTask]:
        """Every FireTask that arrives within `wait` seconds."""
        out: list[FireTask] = []
        try:
            for msg in await self.sub.fetch(batch=100, timeout=wait):
                out.append(decode(msg.data, FireTask))
                await msg.ack()
        except (TimeoutError, NatsTimeoutError):
            pass
        return out


@pytest.fixture
async def harness(bus_config: BusConfig, database_url: str) -> AsyncIterator[Harness]:
    async with running(TriggerActor(bus_config, TriggerActorConfig(database_url=database_url))):
        bus = await Bus.connect(bus_config)
        sub = await bus.js.pull_subscribe(
            subjects.scheduler_commands(), durable="test-scheduler", stream=SCHEDULER_CMD.name
        )
        try:
            yield Harness(bus, sub)
        finally:
            await bus.close()


def test_filters_match_dotted_paths_as_text() -> None:
    event = {"run": {"status": "completed", "usage": {"requests": 2}}, "tags": ["a", "b"]}
    assert matches(event, {"run.status": "completed", "run.usage.requests": "2", "tags.1": "b"})
    assert not matches(event, {"run.status": "failed"})
    assert not matches(event, {"run.missing": "x"})


async def test_a_subject_trigger_fires_on_matching_events_only(harness: Harness) -> None:
    await harness.register("t-1", TriggerConfig(subject=f"ab.notifier.evt.{TENANT}.*.delivered", filter={"kind": "ok"}))
    await asyncio.sleep(0.3)  # the trigger's consumer is being created
    await harness.emit(b'{"kind": "ok", "n": 1}')
    await harness.emit(b'{"kind": "other"}')
    await harness.emit(b"not json")
    fired = await harness.fired()
    assert [(f.task_id, f.fired_by, f.event) for f in fired] == [("t-1", "event", {"kind": "ok", "n": 1})]


async def test_debounce_collapses_a_burst_into_one_firing_with_the_last_event(harness: Harness) -> None:
    await harness.register("t-2", TriggerConfig(subject=SOURCE, debounce_seconds=0.5))
    await asyncio.sleep(0.3)
    for n in range(10):
        await harness.emit(b'{"n": %d}' % n)
    fired = await harness.fired(wait=2.5)
    assert [f.event for f in fired] == [{"n": 9}]


async def test_a_per_minute_limit_drops_the_excess(harness: Harness) -> None:
    await harness.register("t-3", TriggerConfig(subject=SOURCE, max_runs_per_minute=3))
    await asyncio.sleep(0.3)
    for n in range(8):
        await harness.emit(b'{"n": %d}' % n)
    fired = await harness.fired()
    assert [f.event for f in fired] == [{"n": 0}, {"n": 1}, {"n": 2}]


async def test_other_tenants_subjects_are_refused(harness: Harness) -> None:
    for subject in (
        "ab.notifier.evt.other.d1.delivered",
        "ab.notifier.evt.*.d1.delivered",
        "ab.conversation.cmd.acme.c1",
    ):
        with pytest.raises(BusError) as caught:
            await harness.register("t-4", TriggerConfig(subject=subject))
        assert caught.value.code == "invalid", subject
    report = await harness.bus.request(
        subjects.service(subjects.ActorName.TRIGGER, "health"), HealthCheck(), HealthReport, trace=TRACE
    )
    assert report.ok  # and the actor kept serving
