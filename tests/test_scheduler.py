"""The scheduler with a fake clock (no waiting for real minutes), real nats-server and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest
from pydantic_ai.models.test import TestModel

from actors.conversation.actor import ConversationActor
from actors.conversation.config import ConversationConfig
from actors.executor.actor import ExecutorActor
from actors.executor.config import ExecutorConfig
from actors.scheduler.actor import SchedulerActor
from actors.scheduler.clock import FakeClock
from actors.scheduler.config import SchedulerConfig
from actors.scheduler.timing import validate
from bus import subjects
from bus.actor import Actor
from bus.client import Bus
from bus.config import BusConfig
from bus.errors import BusError
from bus.headers import Trace, new_id
from bus.streams import SCHEDULER_EVT
from schemas.tasks import (
    CreateTask,
    FiredBy,
    FireTask,
    GetTask,
    GetTaskRun,
    ListTaskRuns,
    MisfirePolicy,
    OverlapPolicy,
    SetTaskEnabled,
    TaskRun,
    TaskRunFinished,
    TaskRunList,
    TaskRunStatus,
    TaskRunView,
    TaskType,
    TaskView,
)
from tests.conftest import running, wait_until

TENANT = "acme"
TRACE = Trace(tenant=TENANT)
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Scheduling:
    def __init__(self, bus: Bus, clock: FakeClock) -> None:
        self.bus = bus
        self.clock = clock

    async def ask(self, verb: str, message: Any, reply: type[Any], tenant: str = TENANT) -> Any:
        service = subjects.service(subjects.ActorName.SCHEDULER, verb)
        return await self.bus.request(service, message, reply, trace=Trace(tenant=tenant))

    async def create(self, **fields: Any) -> TaskView:
        fields.setdefault("prompt", "do the thing")
        fields.setdefault("task_type", TaskType.SCHEDULED)
        view: TaskView = await self.ask("create", CreateTask(task_id=new_id(), **fields), TaskView)
        return view

    async def runs(self, task_id: str) -> list[TaskRun]:
        listed: TaskRunList = await self.ask("list_runs", ListTaskRuns(task_id=task_id, limit=200), TaskRunList)
        return sorted(listed.runs, key=lambda r: r.created_at)

    async def advance(self, seconds: float, step: float = 1.0) -> None:
        """Move the fake clock forward in steps, letting the ticker act after each."""
        moved = 0.0
        while moved < seconds:
            await self.clock.advance(step)
            moved += step
            await asyncio.sleep(0.03)


@pytest.fixture
async def scheduling(bus_config: BusConfig, database_url: str) -> AsyncIterator[Callable[..., Any]]:
    """start(replicas=1, platform=False) -> Scheduling, with schedulers on one fake clock."""
    stack: list[Any] = []
    clock = FakeClock(START)

    async def start(replicas: int = 1, platform: bool = False) -> Scheduling:
        # a loaded test machine may run the ticker late in fake time: no firing counts as missed here
        config = SchedulerConfig(database_url=database_url, misfire_grace_s=365 * 24 * 3600.0)
        actors: list[Actor] = [SchedulerActor(bus_config, config, clock=clock) for _ in range(replicas)]
        if platform:
            actors.append(ConversationActor(bus_config, ConversationConfig(database_url=database_url)))
            model = TestModel(custom_output_text="task done", call_tools=[])
            actors.append(ExecutorActor(bus_config, ExecutorConfig(database_url=database_url), model_override=model))
        ctx = running(*actors)
        await ctx.__aenter__()
        stack.append(ctx)
        bus = await Bus.connect(bus_config)
        stack.append(bus)
        return Scheduling(bus, clock)

    yield start
    for item in reversed(stack):
        if isinstance(item, Bus):
            await item.close()
        else:
            await item.__aexit__(None, None, None)


def test_cron_times_follow_the_time_zone_across_dst() -> None:
    berlin = validate(schedule_expression="30 2 * * *", interval_seconds=None, run_at=None, timezone="Europe/Berlin")
    spring = [datetime(2026, 3, 28, 12, tzinfo=UTC)]
    for _ in range(3):
        nxt = berlin.next_after(spring[-1])
        assert nxt is not None
        spring.append(nxt)
    # 02:30 CET, then a day with no 02:30 (clocks jump to 03:00 CEST), then 02:30 CEST
    assert spring[1:] == [
        datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
        datetime(2026, 3, 30, 0, 30, tzinfo=UTC),
        datetime(2026, 3, 31, 0, 30, tzinfo=UTC),
    ]
    new_york = validate(
        schedule_expression="30 1 * * *", interval_seconds=None, run_at=None, timezone="America/New_York"
    )
    fall = [datetime(2026, 10, 31, 12, tzinfo=UTC)]
    for _ in range(3):
        nxt = new_york.next_after(fall[-1])
        assert nxt is not None
        fall.append(nxt)
    # 01:30 EDT, then once (not twice) on the day 01:00-02:00 repeats, then 01:30 EST
    assert fall[1:] == [
        datetime(2026, 11, 1, 5, 30, tzinfo=UTC),
        datetime(2026, 11, 2, 6, 30, tzinfo=UTC),
        datetime(2026, 11, 3, 6, 30, tzinfo=UTC),
    ]


def test_a_one_shot_without_an_offset_is_a_wall_clock_time_in_the_task_s_zone() -> None:
    def once(at: datetime, zone: str) -> datetime | None:
        return validate(schedule_expression=None, interval_seconds=None, run_at=at, timezone=zone).run_at

    assert once(datetime(2026, 12, 24, 9), "America/New_York") == datetime(2026, 12, 24, 14, tzinfo=UTC)  # EST
    assert once(datetime(2026, 7, 4, 9), "America/New_York") == datetime(2026, 7, 4, 13, tzinfo=UTC)  # EDT
    assert once(datetime(2026, 3, 29, 2, 30), "Europe/Berlin") == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # skipped
    assert once(datetime(2026, 11, 1, 1, 30), "America/New_York") == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # first
    with_offset = datetime(2026, 12, 24, 9, tzinfo=timezone(timedelta(hours=1)))
    assert once(with_offset, "America/New_York") == datetime(2026, 12, 24, 8, tzinfo=UTC)  # the offset wins


async def test_the_ticker_fires_at_the_right_instants_across_a_dst_change(
    bus_config: BusConfig, database_url: str
) -> None:
    clock = FakeClock(datetime(2026, 3, 28, 12, tzinfo=UTC))  # the day before Berlin springs forward
    bus = await Bus.connect(bus_config)
    s = Scheduling(bus, clock)
    try:
        config = SchedulerConfig(database_url=database_url, misfire_grace_s=365 * 24 * 3600.0)
        async with running(SchedulerActor(bus_config, config, clock=clock)):
            view = await s.create(
                schedule_expression="30 2 * * *", timezone="Europe/Berlin", overlap_policy=OverlapPolicy.ALLOW
            )
            await s.advance(3 * 24 * 3600, step=1800)  # three days, half an hour at a time
            await wait_until(lambda: _count(s, view.task.id, 3), what="three daily firings")
            runs = await s.runs(view.task.id)
    finally:
        await bus.close()
    assert [r.scheduled_for for r in runs] == [
        datetime(2026, 3, 29, 1, 0, tzinfo=UTC),  # 02:30 does not exist that night: 03:00 CEST
        datetime(2026, 3, 30, 0, 30, tzinfo=UTC),  # 02:30 CEST
        datetime(2026, 3, 31, 0, 30, tzinfo=UTC),
    ]


async def test_invalid_tasks_are_refused_with_reasons(scheduling: Callable[..., Any]) -> None:
    s: Scheduling = await scheduling()
    cases: list[dict[str, Any]] = [
        {"schedule_expression": "every day"},
        {"schedule_expression": "* * * * *", "interval_seconds": 5},
        {},
        {"interval_seconds": 0},
        {"interval_seconds": 5, "timezone": "Mars/Olympus"},
        {"run_at": START - timedelta(hours=1)},
        {"interval_seconds": 5, "notification_config": {"channels": ["email"]}},
        {"interval_seconds": 5, "notification_config": {"channels": ["webhook"], "webhook_url": "http://10.0.0.1/x"}},
        {"interval_seconds": 5, "notification_config": {"channels": ["slack"], "slack_webhook_url": "file:///etc"}},
    ]
    for fields in cases:
        with pytest.raises(BusError) as caught:
            await s.create(**fields)
        assert caught.value.code == "invalid", fields


async def test_tasks_are_tenant_scoped(scheduling: Callable[..., Any]) -> None:
    s: Scheduling = await scheduling()
    view = await s.create(interval_seconds=60, timezone="Europe/Paris")
    assert view.notification_secret is not None and view.notification_secret.startswith("whsec_")
    assert view.task.next_run_at == START + timedelta(seconds=60)
    again = await s.ask("get", GetTask(task_id=view.task.id), TaskView)
    assert again.notification_secret is None  # shown once, at creation
    with pytest.raises(BusError) as caught:
        await s.ask("get", GetTask(task_id=view.task.id), TaskView, tenant="other")
    assert caught.value.code == "not_found"


async def test_an_interval_task_fires_once_per_slot_with_two_replicas(scheduling: Callable[..., Any]) -> None:
    s: Scheduling = await scheduling(replicas=2)
    view = await s.create(interval_seconds=10, overlap_policy=OverlapPolicy.ALLOW)
    await s.advance(60)
    await wait_until(lambda: _count(s, view.task.id, 6), what="six firings")
    runs = await s.runs(view.task.id)
    assert [r.scheduled_for for r in runs] == [START + timedelta(seconds=10 * i) for i in range(1, 7)]
    assert all(r.fired_by is FiredBy.SCHEDULE for r in runs)


async def test_a_per_second_cron_task_fires_on_each_slot(scheduling: Callable[..., Any]) -> None:
    s: Scheduling = await scheduling()
    view = await s.create(schedule_expression="*/5 * * * * *", overlap_policy=OverlapPolicy.ALLOW)
    await s.advance(30)
    await wait_until(lambda: _count(s, view.task.id, 6), what="six firings")
    runs = await s.runs(view.task.id)
    assert [r.scheduled_for for r in runs] == [START + timedelta(seconds=5 * i) for i in range(1, 7)]


async def _count(s: Scheduling, task_id: str, expected: int) -> bool:
    runs = await s.runs(task_id)
    assert len(runs) <= expected, f"{len(runs)} firings, expected {expected}"
    return len(runs) == expected


@pytest.mark.parametrize(("policy", "expected"), [(MisfirePolicy.RUN_ONCE, 1), (MisfirePolicy.SKIP, 0)])
async def test_misfire_policy_applies_after_downtime(
    bus_config: BusConfig, database_url: str, policy: MisfirePolicy, expected: int
) -> None:
    clock = FakeClock(START)
    config = SchedulerConfig(database_url=database_url, misfire_grace_s=5.0)
    bus = await Bus.connect(bus_config)
    s = Scheduling(bus, clock)
    try:
        async with running(SchedulerActor(bus_config, config, clock=clock)):
            view = await s.create(interval_seconds=60, misfire_policy=policy, overlap_policy=OverlapPolicy.ALLOW)
        await clock.advance(600)  # down for ten minutes: nine slots missed
        async with running(SchedulerActor(bus_config, config, clock=clock)):
            await asyncio.sleep(0.3)
            await wait_until(lambda: _count(s, view.task.id, expected), what=f"{expected} catch-up firings")
            await asyncio.sleep(0.2)
            runs = await s.runs(view.task.id)
            assert len(runs) == expected
            task = (await s.ask("get", GetTask(task_id=view.task.id), TaskView)).task
            assert task.next_run_at == START + timedelta(seconds=660)  # back on the schedule
    finally:
        await bus.close()


async def test_overlap_skip_records_a_skipped_run(scheduling: Callable[..., Any]) -> None:
    s: Scheduling = await scheduling()  # no executor: the first run never ends
    view = await s.create(interval_seconds=10)
    await s.advance(20)
    await wait_until(lambda: _count(s, view.task.id, 2), what="two firings")
    first, second = await s.runs(view.task.id)
    assert first.status in (TaskRunStatus.QUEUED, TaskRunStatus.RUNNING)
    assert second.status is TaskRunStatus.SKIPPED


async def test_disable_pauses_and_enable_resumes_the_schedule(scheduling: Callable[..., Any]) -> None:
    s: Scheduling = await scheduling()
    view = await s.create(interval_seconds=10, overlap_policy=OverlapPolicy.ALLOW, misfire_policy=MisfirePolicy.SKIP)
    await s.ask("set_enabled", SetTaskEnabled(task_id=view.task.id, enabled=False), TaskView)
    await s.advance(30)
    assert await s.runs(view.task.id) == []
    resumed = await s.ask("set_enabled", SetTaskEnabled(task_id=view.task.id, enabled=True), TaskView)
    assert resumed.task.next_run_at == START + timedelta(seconds=40)
    await s.advance(10)
    await wait_until(lambda: _count(s, view.task.id, 1), what="the first firing after resuming")


async def test_a_firing_id_fires_once(scheduling: Callable[..., Any]) -> None:
    s: Scheduling = await scheduling()
    view = await s.create(interval_seconds=3600)  # "run now" works for every kind of task
    fire = FireTask(task_id=view.task.id, firing_id="f-1", fired_by=FiredBy.MANUAL, event={"n": 1})
    subject = subjects.scheduler_command(TENANT, view.task.id)
    await s.bus.publish(subject, fire, trace=TRACE)
    await s.bus.publish(subject, fire, trace=TRACE)  # a redelivery (not deduped by the bus: no msg id)
    await wait_until(lambda: _count(s, view.task.id, 1), what="one firing")
    await asyncio.sleep(0.3)
    (run,) = await s.runs(view.task.id)
    assert run.id == "f-1" and run.event == {"n": 1} and run.fired_by is FiredBy.MANUAL


async def test_a_delegated_task_runs_at_once_and_announces_its_end(scheduling: Callable[..., Any]) -> None:
    s: Scheduling = await scheduling(platform=True)
    finished = s.bus.replay(SCHEDULER_EVT.name, "ab.scheduler.evt.acme.*.completed", TaskRunFinished)
    view = await s.create(task_type=TaskType.DELEGATION, prompt="summarize", inputs={"doc": "d1"})
    (run,) = view.last_runs
    async with asyncio.timeout(20):
        event = (await anext(finished)).body
    assert event.run.id == run.id and event.run.output == "task done"
    done = (await s.ask("get_run", GetTaskRun(task_run_id=run.id), TaskRunView)).run
    assert done.status is TaskRunStatus.COMPLETED and done.fired_by is FiredBy.NOW
    assert done.usage.requests == 1 and done.conversation_id == run.id


async def test_thread_mode_continues_one_conversation(scheduling: Callable[..., Any]) -> None:
    s: Scheduling = await scheduling(platform=True)
    view = await s.create(interval_seconds=10, thread=True)
    await s.advance(10)
    await wait_until(lambda: _done(s, view.task.id, 1), timeout=20, what="the first run")
    await s.advance(10)
    await wait_until(lambda: _done(s, view.task.id, 2), timeout=20, what="the second run")
    runs = await s.runs(view.task.id)
    assert {r.conversation_id for r in runs} == {f"thread-{view.task.id}"}


async def _done(s: Scheduling, task_id: str, expected: int) -> bool:
    return sum(r.status is TaskRunStatus.COMPLETED for r in await s.runs(task_id)) == expected


@pytest.mark.timeout(120)
async def test_kill_9_over_a_missed_firing_applies_the_misfire_policy_on_restart(
    bus_config: BusConfig, spawn_actor: Callable[..., Any]
) -> None:
    env = {"AGENTBUS_MISFIRE_GRACE": "1", "AGENTBUS_SCHEDULER_TICK": "0.2"}
    bus = await Bus.connect(bus_config)
    s = Scheduling(bus, FakeClock(START))  # only its request helpers: the processes use the real clock
    try:
        first = spawn_actor("scheduler", env)
        run_at = datetime.now(UTC) + timedelta(seconds=4)

        views: list[TaskView] = []

        async def created() -> bool:
            try:
                views.append(await s.create(run_at=run_at, misfire_policy=MisfirePolicy.RUN_ONCE))
            except BusError:  # the scheduler process is still starting
                return False
            return True

        await wait_until(created, timeout=30, what="the scheduler to take the task")
        task_id = views[0].task.id
        first.kill()  # down over the firing time
        await asyncio.sleep(max((run_at - datetime.now(UTC)).total_seconds(), 0) + 2.5)
        spawn_actor("scheduler", env)

        async def fired() -> bool:
            try:
                return len(await s.runs(task_id)) == 1
            except BusError:
                return False

        await wait_until(fired, timeout=30, what="the catch-up firing")
        await asyncio.sleep(1.0)
        (run,) = await s.runs(task_id)
        assert run.scheduled_for == run_at and run.fired_by is FiredBy.SCHEDULE
        task = (await s.ask("get", GetTask(task_id=task_id), TaskView)).task
        assert task.next_run_at is None  # a one-shot task has nothing left to fire
    finally:
        await bus.close()


async def test_a_task_run_whose_end_cannot_be_stored_ends_failed_with_the_reason(
    bus_config: BusConfig, database_url: str
) -> None:
    """A dead-lettered command ends its entity visibly: the task run's RunFinished fails every time
    (PostgreSQL refuses to record the run completed), so it is dead-lettered, and the run ends
    `failed` with the reason instead of staying `running` forever."""
    config = dataclasses.replace(bus_config, max_deliver=2)
    model = TestModel(custom_output_text="task done", call_tools=[])
    actors: list[Actor] = [
        SchedulerActor(config, SchedulerConfig(database_url=database_url), clock=FakeClock(START)),
        ConversationActor(config, ConversationConfig(database_url=database_url)),
        ExecutorActor(config, ExecutorConfig(database_url=database_url), model_override=model),
    ]
    async with running(*actors):
        db = await asyncpg.connect(database_url)
        await db.execute(
            """
            CREATE FUNCTION scheduler.refuse_completed() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN RAISE EXCEPTION 'disk full'; END $$;
            CREATE TRIGGER refuse_completed BEFORE UPDATE ON scheduler.task_runs
            FOR EACH ROW WHEN (NEW.status = 'completed') EXECUTE FUNCTION scheduler.refuse_completed();
            """
        )
        await db.close()
        s = Scheduling(await Bus.connect(config), FakeClock(START))
        failed = s.bus.replay(SCHEDULER_EVT.name, "ab.scheduler.evt.acme.*.failed", TaskRunFinished)
        view = await s.create(task_type=TaskType.DELEGATION, prompt="summarize")
        (run,) = view.last_runs
        async with asyncio.timeout(30):
            event = (await anext(failed)).body
        assert event.run.id == run.id and event.run.status is TaskRunStatus.FAILED
        done = (await s.ask("get_run", GetTaskRun(task_run_id=run.id), TaskRunView)).run
        assert done.status is TaskRunStatus.FAILED and done.error is not None and "gave up" in done.error
        await s.bus.close()
