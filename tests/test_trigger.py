"""The trigger actor against a real nats-server and PostgreSQL.

The test plays the scheduler: it pulls FireTask commands from AB_SCHEDULER_CMD and publishes
TaskChanged / TaskRunFinished events itself. Webhooks are signed with the `standardwebhooks`
library, not with the actor's own code.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import pytest
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from standardwebhooks import Webhook

from actors.scheduler.actor import SchedulerActor
from actors.scheduler.config import SchedulerConfig
from actors.trigger.actor import TriggerActor
from actors.trigger.config import TriggerActorConfig
from actors.trigger.patterns import check_subject, consumer_name, listens_to, matches, own_event
from actors.trigger.signatures import new_secret, sign, verify
from bus import subjects
from bus.actor import Delivery
from bus.client import Bus
from bus.codec import decode
from bus.config import BusConfig
from bus.errors import BusError
from bus.headers import Header, Trace
from bus.streams import NOTIFIER_EVT, SCHEDULER_CMD, SCHEDULER_EVT
from schemas.health import HealthCheck, HealthReport
from schemas.tasks import (
    CreateTask,
    FiredBy,
    FireTask,
    GetTask,
    IngestWebhook,
    RegisterTrigger,
    Task,
    TaskChanged,
    TaskRun,
    TaskRunFinished,
    TaskRunStatus,
    TaskType,
    TaskView,
    TriggerConfig,
    TriggerRegistered,
    UnregisterTrigger,
    WebhookAccepted,
)
from tests.conftest import running, wait_until

TENANT = "acme"
TRACE = Trace(tenant=TENANT)
SOURCE = f"ab.notifier.evt.{TENANT}.d1.delivered"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def actor_config(database_url: str) -> TriggerActorConfig:
    return TriggerActorConfig(database_url=database_url, reconcile_s=0.3, sweep_s=1.0, debounce_poll_s=0.2, retry_s=0.2)


def signed(secret: str, body: bytes, *, webhook_id: str, at: float | None = None) -> dict[str, str]:
    """Standard Webhooks headers, signed by the reference library."""
    when = datetime.fromtimestamp(at if at is not None else time.time(), UTC)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, when, body.decode()),
    }


def task(task_id: str, config: TriggerConfig, *, enabled: bool = True, minute: int = 1) -> Task:
    at = T0 + timedelta(minutes=minute)
    return Task(
        id=task_id, tenant=TENANT, task_type=TaskType.TRIGGERED, prompt="p", agent="assistant",
        trigger_config=config, enabled=enabled, created_at=T0, updated_at=at,
    )  # fmt: skip


class Harness:
    def __init__(self, bus: Bus, sub: Any, database_url: str) -> None:
        self.bus = bus
        self.sub = sub
        self.database_url = database_url

    async def register(self, task_id: str, config: TriggerConfig, tenant: str = TENANT) -> TriggerRegistered:
        service = subjects.service(subjects.ActorName.TRIGGER, "register")
        message = RegisterTrigger(task_id=task_id, config=config)
        return await self.bus.request(service, message, TriggerRegistered, trace=Trace(tenant=tenant))

    async def unregister(self, task_id: str) -> None:
        service = subjects.service(subjects.ActorName.TRIGGER, "unregister")
        await self.bus.request(service, UnregisterTrigger(task_id=task_id), TriggerRegistered, trace=TRACE)

    async def ingest(self, task_id: str, body: bytes, headers: dict[str, str]) -> WebhookAccepted:
        hook = IngestWebhook(
            task_id=task_id,
            webhook_id=headers["webhook-id"],
            webhook_timestamp=headers["webhook-timestamp"],
            webhook_signature=headers["webhook-signature"],
            body=body.decode(),
        )
        service = subjects.service(subjects.ActorName.TRIGGER, "ingest")
        return await self.bus.request(service, hook, WebhookAccepted, trace=Trace(tenant="webhook"))

    async def refused(self, call: Awaitable[Any]) -> BusError:
        with pytest.raises(BusError) as caught:
            await call
        return caught.value

    async def emit(self, body: bytes, subject: str = SOURCE, msg_id: str | None = None) -> None:
        await self.bus.js.publish(subject, body, headers=TRACE.headers(msg_id=msg_id))

    async def changed(self, t: Task, *, deleted: bool = False) -> None:
        subject = subjects.scheduler_event(t.tenant, t.id, "changed")
        await self.bus.publish(subject, TaskChanged(task=t, deleted=deleted), trace=TRACE)

    async def messages(self, wait: float = 1.5, *, expect: int | None = None) -> list[Msg]:
        """FireTask messages arriving within `wait` s (or as soon as `expect` of them arrived)."""
        out: list[Msg] = []
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0 and (expect is None or len(out) < expect):
            try:
                msgs = await self.sub.fetch(batch=100, timeout=left)
            except (TimeoutError, NatsTimeoutError):
                break
            for msg in msgs:
                await msg.ack()
            out += msgs
        return out

    async def fired(self, wait: float = 1.5, *, expect: int | None = None) -> list[FireTask]:
        return [decode(m.data, FireTask) for m in await self.messages(wait, expect=expect)]

    async def consumer_exists(self, task_id: str, stream: str = NOTIFIER_EVT.name) -> bool:
        try:
            await self.bus.js.consumer_info(stream, consumer_name(task_id))
        except NotFoundError:
            return False
        return True

    async def sql(self, query: str, *args: Any) -> Any:
        conn = await asyncpg.connect(self.database_url)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()


@pytest.fixture
async def bus(bus_config: BusConfig) -> AsyncIterator[Bus]:
    b = await Bus.connect(bus_config)
    yield b
    await b.close()


@pytest.fixture
async def scheduler_sub(bus: Bus) -> AsyncIterator[Any]:
    sub = await bus.js.pull_subscribe(
        subjects.scheduler_commands(), durable="test-scheduler", stream=SCHEDULER_CMD.name
    )
    yield sub
    await sub.unsubscribe()  # else closing the connection waits out its drain timeout


@pytest.fixture
async def harness(bus_config: BusConfig, database_url: str, bus: Bus, scheduler_sub: Any) -> AsyncIterator[Harness]:
    async with running(TriggerActor(bus_config, actor_config(database_url))):
        yield Harness(bus, scheduler_sub, database_url)


# --- pure functions --------------------------------------------------------------------------------


def test_filters_match_dotted_paths_as_text() -> None:
    event = {"run": {"status": "completed", "usage": {"requests": 2}, "error": None}, "tags": ["a", "b"], "ok": True}
    assert matches(event, {"run.status": "completed", "run.usage.requests": "2", "tags.1": "b", "ok": "true"})
    assert matches(event, {"run.error": "null"}) and matches(event, {})
    assert not matches(event, {"run.status": "failed"})
    assert not matches(event, {"run.missing": "x"})
    assert not matches(event, {"tags.2": "c"})


def test_subject_patterns_stay_inside_the_tenants_events() -> None:
    check_subject("ab.scheduler.evt.acme.task-a.completed", "acme")
    check_subject("ab.notifier.evt.acme.>", "acme")
    check_subject("ab.notifier.evt.acme.*.delivered", "acme")
    for bad in (
        "ab.notifier.evt.other.d1.delivered",  # another tenant
        "ab.notifier.evt.*.d1.delivered",  # every tenant
        "ab.notifier.evt.>",
        "ab.*.evt.acme.>",  # an area wildcard spans streams
        "ab.conversation.cmd.acme.c1",  # commands, not events
        "ab.notifier.evt.acme",
        "ab.notifier.evt.acme.>.x",
        "ab.notifier.evt.acme.d*",
        "ab.notifier.evt.acme..x",
    ):
        with pytest.raises(BusError) as caught:
            check_subject(bad, "acme")
        assert caught.value.code == "invalid", bad
    assert listens_to("ab.notifier.evt.acme.*.delivered", "acme")
    assert not listens_to("ab.notifier.evt.acme.*.delivered", "other")
    assert own_event("ab.scheduler.evt.acme.t1.completed", "acme", "t1")
    assert not own_event("ab.scheduler.evt.acme.t2.completed", "acme", "t1")
    assert not own_event("ab.notifier.evt.acme.t1.delivered", "acme", "t1")


def test_subjects_are_parsed_as_they_are_built() -> None:
    built = subjects.scheduler_event("acme", "task-a", "completed")
    assert subjects.parse_event(built) == subjects.EventSubject(
        area="scheduler", tenant="acme", entity_id="task-a", kind="completed"
    )
    assert subjects.parse_event(subjects.scheduler_command("acme", "task-a")) is None
    assert subjects.parse_event("ab.scheduler.evt.*.task-a.completed") is None  # a pattern, not a subject
    assert subjects.pattern_tenant(subjects.notifier_events()) is None  # every tenant's
    assert subjects.pattern_tenant("ab.notifier.evt.acme.>") == "acme"
    assert subjects.pattern_error("ab.x.evt.acme.d*") and subjects.pattern_error("ab..x")
    assert subjects.pattern_error(subjects.conversation_turns_all()) is None
    assert subjects.pattern_matches("ab.x.evt.acme.*.done", "ab.x.evt.acme.t1.done")
    assert not subjects.pattern_matches("ab.x.evt.acme.*.done", "ab.x.evt.acme.t1.t2.done")
    assert subjects.pattern_matches("ab.x.evt.acme.>", "ab.x.evt.acme.t1.t2.done")
    assert not subjects.pattern_matches("ab.x.evt.acme.>", "ab.x.evt.acme")
    assert subjects.pattern_matches(subjects.conversation_turns_all(), subjects.conversation_event("a", "c", "turn"))


def test_signatures_agree_with_the_standard_webhooks_library() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret.removeprefix("whsec_"))) == 24
    body = b'{"a": 1}'
    theirs = signed(secret, body, webhook_id="msg_1")
    stamp = theirs["webhook-timestamp"]
    assert verify(secret, "msg_1", stamp, body, theirs["webhook-signature"])
    assert not verify(secret, "msg_2", stamp, body, theirs["webhook-signature"])
    assert not verify(secret, "msg_1", stamp, b'{"a": 2}', theirs["webhook-signature"])
    assert not verify(new_secret(), "msg_1", stamp, body, theirs["webhook-signature"])
    rotated = f"v1a,abc v1,not-base64!! v1,{base64.b64encode(b'x' * 32).decode()} {theirs['webhook-signature']}"
    assert verify(secret, "msg_1", stamp, body, rotated)
    assert not verify(secret, "msg_1", stamp, body, "v1a,abc v1,ü €")  # junk, non-ASCII: no crash
    ours = {**theirs, "webhook-signature": sign(secret, "msg_1", stamp, body)}
    assert Webhook(secret).verify(body, ours) == {"a": 1}


# --- webhooks --------------------------------------------------------------------------------------


async def test_register_gives_a_webhook_a_new_whsec_secret_each_time(harness: Harness) -> None:
    first = await harness.register("hook-1", TriggerConfig())
    assert first.webhook_secret is not None and first.webhook_secret.startswith("whsec_")
    assert len(base64.b64decode(first.webhook_secret.removeprefix("whsec_"))) == 24
    assert (await harness.register("sub-1", TriggerConfig(subject=SOURCE))).webhook_secret is None
    again = await harness.register("hook-1", TriggerConfig())  # a retried create: the last answer's secret wins
    assert again.webhook_secret not in (None, first.webhook_secret)
    body = b'{"n": 1}'
    old = await harness.refused(harness.ingest("hook-1", body, signed(first.webhook_secret, body, webhook_id="w1")))
    assert old.code == "unauthorized"
    assert again.webhook_secret is not None
    await harness.ingest("hook-1", body, signed(again.webhook_secret, body, webhook_id="w1"))
    taken = await harness.refused(harness.register("hook-1", TriggerConfig(), tenant="other"))
    assert taken.code == "conflict"


async def test_a_signed_webhook_fires_its_task_with_the_body(harness: Harness) -> None:
    secret = (await harness.register("hook-1", TriggerConfig())).webhook_secret
    assert secret is not None
    body = b'{"ticket": 42, "text": "printer on fire"}'
    accepted = await harness.ingest("hook-1", body, signed(secret, body, webhook_id="msg_1"))
    (msg,) = await harness.messages(expect=1)
    fire = decode(msg.data, FireTask)
    assert fire == FireTask(
        task_id="hook-1",
        firing_id=accepted.firing_id,
        fired_by=FiredBy.WEBHOOK,
        event={"ticket": 42, "text": "printer on fire"},
    )
    assert msg.subject == subjects.scheduler_command(TENANT, "hook-1")
    assert msg.headers is not None
    assert msg.headers[Header.MSG_ID] == accepted.firing_id and msg.headers[Header.TENANT] == TENANT

    # the sender rotating its key signs with both: one valid signature is enough
    other = new_secret()
    headers = signed(secret, body, webhook_id="msg_2")
    headers["webhook-signature"] = (
        signed(other, body, webhook_id="msg_2")["webhook-signature"] + " " + (headers["webhook-signature"])
    )
    second = await harness.ingest("hook-1", body, headers)
    assert second.firing_id != accepted.firing_id
    assert [f.firing_id for f in await harness.fired(expect=1)] == [second.firing_id]


async def test_bad_stale_replayed_and_unknown_webhooks_fire_nothing(harness: Harness) -> None:
    secret = (await harness.register("hook-1", TriggerConfig())).webhook_secret
    assert secret is not None
    await harness.register("sub-1", TriggerConfig(subject=SOURCE))
    body = b'{"n": 1}'

    async def code(task_id: str, payload: bytes, headers: dict[str, str]) -> tuple[str, str]:
        error = await harness.refused(harness.ingest(task_id, payload, headers))
        return error.code, error.message

    assert (await code("hook-1", body, signed(new_secret(), body, webhook_id="m1")))[0] == "unauthorized"
    tampered = signed(secret, body, webhook_id="m1")
    assert (await code("hook-1", b'{"n": 2}', tampered))[0] == "unauthorized"
    stale, why = await code("hook-1", body, signed(secret, body, webhook_id="m2", at=time.time() - 360))
    assert stale == "unauthorized" and "old" in why
    future, why = await code("hook-1", body, signed(secret, body, webhook_id="m3", at=time.time() + 360))
    assert future == "unauthorized" and "future" in why
    not_a_time = {**signed(secret, body, webhook_id="m4"), "webhook-timestamp": "yesterday"}
    assert (await code("hook-1", body, not_a_time))[0] == "unauthorized"
    assert (await code("hook-1", b"[1, 2]", signed(secret, b"[1, 2]", webhook_id="m5")))[0] == "invalid"
    assert (await code("hook-1", b"{nope", signed(secret, b"{nope", webhook_id="m6")))[0] == "invalid"
    assert (await code("nobody", body, signed(secret, body, webhook_id="m7")))[0] == "not_found"
    assert (await code("sub-1", body, signed(secret, body, webhook_id="m8")))[0] == "not_found"

    await harness.ingest("hook-1", body, signed(secret, body, webhook_id="m9"))
    replayed, why = await code("hook-1", body, signed(secret, body, webhook_id="m9"))
    assert replayed == "conflict" and "m9" in why
    assert [f.event for f in await harness.fired(wait=1.0)] == [{"n": 1}]  # only m9, once


async def test_a_disabled_or_deleted_webhook_task_is_not_found(harness: Harness) -> None:
    secret = (await harness.register("hook-1", TriggerConfig())).webhook_secret
    assert secret is not None
    body = b'{"n": 1}'
    n = 0

    async def answer() -> str:
        nonlocal n
        n += 1
        try:
            await harness.ingest("hook-1", body, signed(secret, body, webhook_id=f"w{n}"))
        except BusError as e:
            return e.code
        return "accepted"

    def answers(expected: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await answer() == expected

        return check

    await harness.changed(task("hook-1", TriggerConfig(), enabled=False, minute=2))
    await wait_until(answers("not_found"), timeout=10, what="the disabled webhook to be not found")
    await harness.changed(task("hook-1", TriggerConfig(), enabled=True, minute=1))  # older: ignored
    await asyncio.sleep(0.3)
    assert await answer() == "not_found"
    await harness.changed(task("hook-1", TriggerConfig(), enabled=True, minute=3))
    await wait_until(answers("accepted"), timeout=10, what="the enabled webhook to be accepted")
    await harness.changed(task("hook-1", TriggerConfig(), minute=4), deleted=True)
    await wait_until(answers("not_found"), timeout=10, what="the deleted webhook to be not found")


async def test_a_webhook_whose_body_misses_the_filter_is_received_and_starts_nothing(harness: Harness) -> None:
    secret = (await harness.register("hook-1", TriggerConfig(filter={"action": "opened"}))).webhook_secret
    assert secret is not None
    for n, action in enumerate(("closed", "opened")):
        body = b'{"action": "%s"}' % action.encode()
        await harness.ingest("hook-1", body, signed(secret, body, webhook_id=f"w{n}"))
    assert [f.event for f in await harness.fired()] == [{"action": "opened"}]


async def test_a_webhook_over_the_limit_is_refused_so_its_sender_retries(harness: Harness) -> None:
    secret = (await harness.register("hook-1", TriggerConfig(max_runs_per_minute=1))).webhook_secret
    assert secret is not None
    body = b'{"n": 1}'
    await harness.ingest("hook-1", body, signed(secret, body, webhook_id="w1"))
    for _ in range(2):  # the refused one left no receipt: its retry is not a replay
        error = await harness.refused(harness.ingest("hook-1", body, signed(secret, body, webhook_id="w2")))
        assert error.code == "unavailable" and "limit" in error.message
    assert len(await harness.fired()) == 1


# --- bus subjects ----------------------------------------------------------------------------------


async def test_a_subject_trigger_fires_on_matching_events_only(harness: Harness) -> None:
    config = TriggerConfig(subject=f"ab.notifier.evt.{TENANT}.*.delivered", filter={"kind": "ok"})
    await harness.register("t-1", config)  # its consumer exists when register answers: no sleep needed
    await harness.emit(b'{"kind": "ok", "n": 1}')
    await harness.emit(b'{"kind": "other"}')
    await harness.emit(b"not json")
    await harness.emit(b'["kind", "ok"]')
    await harness.emit(b'{"kind": "ok", "n": 2}', subject=f"ab.notifier.evt.{TENANT}.d1.failed")
    await harness.emit(b'{"kind": "ok", "n": 3}', subject="ab.notifier.evt.other.d1.delivered")
    fired = await harness.fired()
    assert [(f.task_id, f.fired_by, f.event) for f in fired] == [("t-1", "event", {"kind": "ok", "n": 1})]


async def test_a_chain_fires_b_with_as_output_when_a_completes(harness: Harness) -> None:
    a_done = f"ab.scheduler.evt.{TENANT}.task-a.*"
    await harness.register("task-b", TriggerConfig(subject=a_done, filter={"run.status": "completed"}))
    await harness.register("task-loop", TriggerConfig(subject=f"ab.scheduler.evt.{TENANT}.task-loop.*"))

    def finished(task_id: str, status: TaskRunStatus, output: str | None) -> TaskRunFinished:
        run = TaskRun(
            id=f"run-{task_id}-{status}", task_id=task_id, tenant=TENANT, fired_by=FiredBy.SCHEDULE,
            status=status, output=output, created_at=T0,
        )  # fmt: skip
        return TaskRunFinished(run=run)

    kind = {TaskRunStatus.COMPLETED: "completed", TaskRunStatus.FAILED: "failed"}
    for task_id, status, output in (
        ("task-a", TaskRunStatus.FAILED, None),
        ("task-a", TaskRunStatus.COMPLETED, "A's answer: 42"),
        ("task-loop", TaskRunStatus.COMPLETED, "me"),  # a task never fires on its own events
    ):
        subject = subjects.scheduler_event(TENANT, task_id, kind[status])
        await harness.bus.publish(subject, finished(task_id, status, output), trace=TRACE, msg_id=f"{task_id}-{status}")
    (fire,) = await harness.fired()
    assert fire.task_id == "task-b" and fire.fired_by is FiredBy.EVENT and fire.event is not None
    run = fire.event["run"]
    assert isinstance(run, dict) and run["output"] == "A's answer: 42" and run["task_id"] == "task-a"


async def test_a_disabled_or_deleted_task_stops_its_subject_trigger(harness: Harness) -> None:
    config = TriggerConfig(subject=SOURCE)
    await harness.register("t-1", config)
    assert await harness.consumer_exists("t-1")

    async def consumer_gone() -> bool:
        return not await harness.consumer_exists("t-1")

    async def consumer_back() -> bool:
        return await harness.consumer_exists("t-1")

    await harness.changed(task("t-1", config, enabled=False, minute=2))
    await wait_until(consumer_gone, timeout=10, what="the disabled trigger's consumer to go")
    await harness.emit(b'{"n": 1}')
    await harness.changed(task("t-1", config, enabled=True, minute=3))
    await wait_until(consumer_back, timeout=10, what="the enabled trigger's consumer")
    await harness.emit(b'{"n": 2}')
    assert [f.event for f in await harness.fired(expect=1)] == [{"n": 2}]  # nothing from while it was disabled

    await harness.changed(task("t-1", config, minute=4), deleted=True)
    await wait_until(consumer_gone, timeout=10, what="the deleted trigger's consumer to go")
    await harness.emit(b'{"n": 3}')
    assert await harness.fired(wait=1.0) == []
    assert await harness.sql("SELECT count(*) FROM trigger.triggers") == 0


async def test_a_task_update_moves_its_trigger_to_the_new_subject(harness: Harness) -> None:
    await harness.register("t-1", TriggerConfig(subject=SOURCE))
    moved = TriggerConfig(subject=f"ab.scheduler.evt.{TENANT}.task-a.completed", filter={"ok": "true"})
    await harness.changed(task("t-1", moved, minute=2))

    async def on_the_new_stream() -> bool:
        return not await harness.consumer_exists("t-1") and await harness.consumer_exists("t-1", SCHEDULER_EVT.name)

    await wait_until(on_the_new_stream, timeout=10, what="the trigger's consumer on the scheduler's events")
    await harness.emit(b'{"ok": true, "n": 1}')  # the old subject
    await harness.emit(b'{"ok": false, "n": 2}', subject=f"ab.scheduler.evt.{TENANT}.task-a.completed")
    await harness.emit(b'{"ok": true, "n": 3}', subject=f"ab.scheduler.evt.{TENANT}.task-a.completed")
    assert [f.event for f in await harness.fired()] == [{"ok": True, "n": 3}]
    spy = TriggerConfig(subject="ab.scheduler.evt.other.task-x.completed")
    await harness.changed(task("t-1", spy, minute=3))  # another tenant's subject: the change is not applied
    await asyncio.sleep(0.5)
    assert await harness.consumer_exists("t-1", SCHEDULER_EVT.name)
    assert await harness.sql("SELECT config->>'subject' FROM trigger.triggers") == moved.subject


async def test_unregister_stops_a_trigger_and_may_be_repeated(harness: Harness) -> None:
    await harness.register("t-1", TriggerConfig(subject=SOURCE))
    await harness.unregister("t-1")
    await harness.unregister("t-1")
    assert not await harness.consumer_exists("t-1")
    await harness.emit(b'{"n": 1}')
    assert await harness.fired(wait=1.0) == []


async def test_debounce_collapses_a_burst_into_one_firing_with_the_last_event(harness: Harness) -> None:
    await harness.register("t-2", TriggerConfig(subject=SOURCE, debounce_seconds=0.5))
    for n in range(10):
        await harness.emit(b'{"n": %d}' % n)
    last = time.monotonic()
    fired = await harness.fired(expect=1, wait=5.0)
    waited = time.monotonic() - last
    assert [f.event for f in fired] == [{"n": 9}]
    assert waited >= 0.45  # debounce_seconds after the last event
    assert await harness.fired(wait=1.0) == []


async def test_a_per_minute_limit_drops_the_excess_and_counts_it(harness: Harness) -> None:
    await harness.register("t-3", TriggerConfig(subject=SOURCE, max_runs_per_minute=3))
    for n in range(8):
        await harness.emit(b'{"n": %d}' % n)
    fired = await harness.fired(wait=2.0)
    assert [f.event for f in fired] == [{"n": 0}, {"n": 1}, {"n": 2}]

    async def counted() -> bool:
        return bool(await harness.sql("SELECT dropped FROM trigger.triggers WHERE task_id = 't-3'") == 5)

    await wait_until(counted, timeout=5, what="5 dropped events counted")


async def test_a_redelivered_event_fires_once(
    bus_config: BusConfig, database_url: str, bus: Bus, scheduler_sub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = Harness(bus, scheduler_sub, database_url)
    published: list[Msg] = []

    async def seen(msg: Msg) -> None:
        published.append(msg)

    core = await bus.nc.subscribe(subjects.scheduler_commands(), cb=seen)  # every publish, duplicates too
    actor = TriggerActor(bus_config, actor_config(database_url))
    deliveries: list[int] = []
    async with running(actor):
        original = actor.listeners.on_event

        async def crash_before_the_first_ack(task_id: str, raw: msgspec.Raw, delivery: Delivery) -> None:
            await original(task_id, raw, delivery)
            deliveries.append(delivery.num_delivered)
            if len(deliveries) == 1:
                raise RuntimeError("killed after firing, before the ack")

        monkeypatch.setattr(actor.listeners, "on_event", crash_before_the_first_ack)
        await harness.register("t-5", TriggerConfig(subject=SOURCE))
        await harness.emit(b'{"n": 1}')

        async def redelivered() -> bool:
            return len(deliveries) >= 2

        await wait_until(redelivered, timeout=10, what="the event's redelivery")
        fired = await harness.fired(wait=1.0)
    await core.unsubscribe()
    assert [f.event for f in fired] == [{"n": 1}] and deliveries[:2] == [1, 2]
    assert len(published) == 1  # published once, not only deduplicated by the stream


async def test_events_published_while_the_actor_is_down_fire_when_it_is_back(
    bus_config: BusConfig, database_url: str, bus: Bus, scheduler_sub: Any
) -> None:
    harness = Harness(bus, scheduler_sub, database_url)
    async with running(TriggerActor(bus_config, actor_config(database_url))):
        await harness.register("t-6", TriggerConfig(subject=SOURCE))
    await harness.emit(b'{"while": "down"}')
    async with running(TriggerActor(bus_config, actor_config(database_url))):
        assert [f.event for f in await harness.fired(expect=1, wait=5.0)] == [{"while": "down"}]


async def test_two_replicas_share_one_debounce_and_one_limit(
    bus_config: BusConfig, database_url: str, bus: Bus, scheduler_sub: Any
) -> None:
    harness = Harness(bus, scheduler_sub, database_url)
    replicas = [TriggerActor(bus_config, actor_config(database_url)) for _ in range(2)]
    async with running(*replicas):
        limited = f"ab.notifier.evt.{TENANT}.d2.delivered"
        await harness.register("debounced", TriggerConfig(subject=SOURCE, debounce_seconds=0.5))
        await harness.register("limited", TriggerConfig(subject=limited, max_runs_per_minute=3))

        async def both_listen() -> bool:
            return all({"debounced", "limited"} <= r.listeners.listening.keys() for r in replicas)

        await wait_until(both_listen, timeout=10, what="both replicas to listen")
        for n in range(10):
            await harness.emit(b'{"n": %d}' % n)
            await harness.emit(b'{"n": %d}' % n, subject=limited)
        fired = await harness.fired(wait=3.0)
    debounced = [f.event for f in fired if f.task_id == "debounced"]
    assert debounced == [{"n": 9}]
    assert len([f for f in fired if f.task_id == "limited"]) == 3


async def test_a_consumer_deleted_under_a_listening_trigger_is_recreated(harness: Harness) -> None:
    await harness.register("t-7", TriggerConfig(subject=SOURCE))
    await harness.bus.js.delete_consumer(NOTIFIER_EVT.name, consumer_name("t-7"))

    async def back() -> bool:
        return await harness.consumer_exists("t-7")

    await wait_until(back, timeout=10, what="the trigger's consumer to be recreated")
    await harness.emit(b'{"after": "recreated"}')
    assert [f.event for f in await harness.fired(expect=1, wait=5.0)] == [{"after": "recreated"}]


async def test_orphaned_trigger_consumers_are_swept(harness: Harness) -> None:
    await harness.register("kept", TriggerConfig(subject=SOURCE))
    ghost = ConsumerConfig(durable_name=consumer_name("ghost"), filter_subject=SOURCE, deliver_policy=DeliverPolicy.NEW)
    await harness.bus.js.add_consumer(NOTIFIER_EVT.name, ghost)

    async def swept() -> bool:
        return not await harness.consumer_exists("ghost")

    await wait_until(swept, timeout=10, what="the orphaned consumer to be deleted")
    assert await harness.consumer_exists("kept")
    assert await harness.bus.js.consumer_info(SCHEDULER_EVT.name, "trigger-tasks")  # its own consumer stays


async def test_other_tenants_and_unstored_subjects_are_refused(harness: Harness) -> None:
    for config in (
        TriggerConfig(subject="ab.notifier.evt.other.d1.delivered"),
        TriggerConfig(subject="ab.notifier.evt.*.d1.delivered"),
        TriggerConfig(subject="ab.conversation.cmd.acme.c1"),
        TriggerConfig(subject=f"ab.nowhere.evt.{TENANT}.x.y"),  # no stream keeps it (core NATS only)
        TriggerConfig(subject=SOURCE, debounce_seconds=-1),
        TriggerConfig(subject=SOURCE, max_runs_per_minute=0),
        TriggerConfig(subject=SOURCE, filter={"a..b": "x"}),
    ):
        error = await harness.refused(harness.register("t-4", config))
        assert error.code == "invalid", config
    report = await harness.bus.request(
        subjects.service(subjects.ActorName.TRIGGER, "health"), HealthCheck(), HealthReport, trace=TRACE
    )
    assert report.ok  # and the actor kept serving


async def test_a_create_whose_trigger_is_not_registered_leaves_no_task(
    bus_config: BusConfig, database_url: str, bus: Bus
) -> None:
    """The scheduler commits a task before it asks the trigger actor to register it; a registration
    refused or unanswered undoes the create, and a retried create registers the trigger again."""

    async def ask(verb: str, message: Any, reply: type[Any]) -> Any:
        return await bus.request(subjects.service(subjects.ActorName.SCHEDULER, verb), message, reply, trace=TRACE)

    def create(task_id: str, subject: str) -> CreateTask:
        config = TriggerConfig(subject=subject)
        return CreateTask(task_id=task_id, task_type=TaskType.TRIGGERED, prompt="p", trigger_config=config)

    async def no_task(task_id: str) -> None:
        with pytest.raises(BusError) as caught:
            await ask("get", GetTask(task_id=task_id), TaskView)
        assert caught.value.code == "not_found"

    async with running(SchedulerActor(bus_config, SchedulerConfig(database_url=database_url))):
        with pytest.raises(BusError) as caught:  # no trigger actor answers
            await ask("create", create("chained", SOURCE), TaskView)
        assert caught.value.code == "unavailable"
        await no_task("chained")
        async with running(TriggerActor(bus_config, actor_config(database_url))):
            with pytest.raises(BusError) as caught:
                await ask("create", create("spy", "ab.notifier.evt.other.d1.delivered"), TaskView)
            assert caught.value.code == "invalid"
            await no_task("spy")
            created = await ask("create", create("chained", SOURCE), TaskView)
            assert created.task.id == "chained"
            await bus.request(  # as if the scheduler had crashed between its commit and the registration
                subjects.service(subjects.ActorName.TRIGGER, "unregister"),
                UnregisterTrigger(task_id="chained"),
                TriggerRegistered,
                trace=TRACE,
            )
            await ask("create", create("chained", SOURCE), TaskView)  # the client's retry
            assert await bus.js.consumer_info(NOTIFIER_EVT.name, consumer_name("chained"))
