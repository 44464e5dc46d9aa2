"""The notifier against a real SMTP server (aiosmtpd), a real HTTP receiver, nats-server and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from actors._outbound import Allowlist, UnsafeURL, check_url
from actors.notifier.actor import NotifierActor
from actors.notifier.config import NotifierConfig
from bus import subjects
from bus.client import Bus
from bus.config import BusConfig
from bus.errors import BusError
from bus.headers import Trace, new_id
from bus.streams import NOTIFIER_EVT
from schemas.notifier import (
    Channel,
    Deliver,
    DeliveryFinished,
    DeliveryList,
    DeliveryStatus,
    DeliveryView,
    InAppNotification,
    ListDeliveries,
    RetryDelivery,
)
from tests.conftest import running, wait_until
from tests.receivers import HttpReceiver, SmtpReceiver, verify_standard_webhook

TENANT = "acme"
TRACE = Trace(tenant=TENANT)
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def deliver(channel: Channel, target: str, **fields: Any) -> Deliver:
    run_id = fields.pop("task_run_id", None) or new_id()
    return Deliver(
        delivery_id=f"{run_id}-{channel.value}",
        task_run_id=run_id,
        task_id="t1",
        channel=channel,
        target=target,
        title="Task t1: completed",
        body="the result",
        payload={"task_id": "t1", "task_run_id": run_id, "output": "the result"},
        **fields,
    )


class Notify:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def send(self, d: Deliver, msg_id: str | None = None) -> None:
        await self.bus.publish(subjects.notifier_command(TENANT, d.delivery_id), d, trace=TRACE, msg_id=msg_id)

    async def log(self, task_run_id: str) -> DeliveryList:
        service = subjects.service(subjects.ActorName.NOTIFIER, "list_deliveries")
        result: DeliveryList = await self.bus.request(
            service, ListDeliveries(task_run_id=task_run_id), DeliveryList, trace=TRACE
        )
        return result

    async def status_is(self, d: Deliver, status: DeliveryStatus) -> bool:
        try:
            listed = (await self.log(d.task_run_id)).deliveries
        except BusError:  # a notifier (re)starting
            return False
        return bool(listed) and listed[0].status is status


def config(database_url: str, smtp_port: int = 1, schedule: tuple[float, ...] = (0.2, 0.2)) -> NotifierConfig:
    return NotifierConfig(
        database_url=database_url,
        smtp_host="127.0.0.1",
        smtp_port=smtp_port,
        smtp_from="agentbus@example.org",
        allow=Allowlist.parse("127.0.0.1"),
        retry_schedule_s=schedule,
    )


@pytest.fixture
async def notify(bus_config: BusConfig) -> AsyncIterator[Notify]:
    bus = await Bus.connect(bus_config)
    yield Notify(bus)
    await bus.close()


async def test_email_arrives_once_with_its_idempotency_id(
    bus_config: BusConfig, database_url: str, notify: Notify
) -> None:
    with SmtpReceiver() as smtp:
        async with running(NotifierActor(bus_config, config(database_url, smtp.port))):
            d = deliver(Channel.EMAIL, "someone@example.org")
            await notify.send(d)
            await notify.send(d, msg_id="again")  # the same delivery, asked twice
            await wait_until(lambda: notify.status_is(d, DeliveryStatus.DELIVERED), what="the email")
            await asyncio.sleep(0.3)
            (entry,) = (await notify.log(d.task_run_id)).deliveries
    (message,) = smtp.messages
    assert message["Message-ID"] == f"<{d.delivery_id}@agentbus>"
    assert message["To"] == "someone@example.org" and message["Subject"] == "Task t1: completed"
    assert str(message.get_payload()).strip() == "the result"
    assert entry.attempts[0].ok and entry.attempts[0].smtp_reply is not None


async def test_signed_webhook_and_slack_arrive_once(bus_config: BusConfig, database_url: str, notify: Notify) -> None:
    async with HttpReceiver() as receiver, running(NotifierActor(bus_config, config(database_url))):
        hook = deliver(Channel.WEBHOOK, receiver.url + "/hook", signing_secret=SECRET)
        slack = deliver(Channel.SLACK, receiver.url + "/slack", task_run_id=hook.task_run_id)
        await notify.send(hook)
        await notify.send(slack)
        await notify.send(hook, msg_id="dup")
        await wait_until(lambda: _all_delivered(notify, hook.task_run_id, 2), what="both deliveries")
        await asyncio.sleep(0.3)
    by_path = {r.path: r for r in receiver.requests}
    assert sorted(r.path for r in receiver.requests) == ["/hook", "/slack"]
    webhook = by_path["/hook"]
    assert verify_standard_webhook(SECRET, webhook.headers, webhook.body)
    assert not verify_standard_webhook("whsec_" + "A" * 32, webhook.headers, webhook.body)
    assert webhook.headers["webhook-id"] == hook.delivery_id
    assert json.loads(webhook.body)["data"]["output"] == "the result"
    assert json.loads(by_path["/slack"].body)["text"].startswith("*Task t1: completed*")


async def _all_delivered(notify: Notify, task_run_id: str, count: int) -> bool:
    listed = (await notify.log(task_run_id)).deliveries
    return len(listed) == count and all(d.status is DeliveryStatus.DELIVERED for d in listed)


async def test_in_app_notifications_are_bus_events(bus_config: BusConfig, database_url: str, notify: Notify) -> None:
    async with running(NotifierActor(bus_config, config(database_url))):
        events = notify.bus.replay(NOTIFIER_EVT.name, "ab.notifier.evt.acme.*.in_app", InAppNotification)
        d = deliver(Channel.IN_APP, "in-app")
        await notify.send(d)
        async with asyncio.timeout(10):
            event = (await anext(events)).body
    assert event.delivery_id == d.delivery_id and event.body == "the result"


async def test_retry_after_is_honoured(bus_config: BusConfig, database_url: str, notify: Notify) -> None:
    async with (
        HttpReceiver(fail=1, retry_after="1") as receiver,
        running(NotifierActor(bus_config, config(database_url))),
    ):
        d = deliver(Channel.WEBHOOK, receiver.url, signing_secret=SECRET)
        sent_at = asyncio.get_running_loop().time()
        await notify.send(d)
        await wait_until(lambda: notify.status_is(d, DeliveryStatus.DELIVERED), what="the retried webhook")
        (entry,) = (await notify.log(d.task_run_id)).deliveries
    first, second = entry.attempts
    assert first.status_code == 503 and first.retry_after_s == 1.0 and second.ok
    assert (second.at - first.at).total_seconds() >= 0.95  # not the 0.2 s of the schedule
    assert len(receiver.requests) == 1 and receiver.requests[0].at - sent_at >= 0.95


async def test_giving_up_is_visible_and_a_manual_retry_succeeds(
    bus_config: BusConfig, database_url: str, notify: Notify
) -> None:
    async with HttpReceiver(fail=3) as receiver, running(NotifierActor(bus_config, config(database_url))):
        failed = notify.bus.replay(NOTIFIER_EVT.name, "ab.notifier.evt.acme.*.failed", DeliveryFinished)
        d = deliver(Channel.WEBHOOK, receiver.url, signing_secret=SECRET)
        await notify.send(d)
        async with asyncio.timeout(15):
            gave_up = (await anext(failed)).body.delivery
        assert gave_up.status is DeliveryStatus.FAILED and len(gave_up.attempts) == 3  # 1 + the schedule's 2
        assert receiver.requests == []
        service = subjects.service(subjects.ActorName.NOTIFIER, "retry")
        view = await notify.bus.request(service, RetryDelivery(delivery_id=d.delivery_id), DeliveryView, trace=TRACE)
        assert view.delivery.status is DeliveryStatus.PENDING
        await wait_until(lambda: notify.status_is(d, DeliveryStatus.DELIVERED), what="the manual retry")
        with pytest.raises(BusError) as caught:  # only a failed delivery can be retried
            await notify.bus.request(service, RetryDelivery(delivery_id=d.delivery_id), DeliveryView, trace=TRACE)
        assert caught.value.code == "conflict"
    assert len(receiver.requests) == 1


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1/hook", "http://localhost:9/hook", "http://[::1]/x", "ftp://example.org/"]
)
async def test_internal_urls_are_refused_without_a_request(
    bus_config: BusConfig, database_url: str, notify: Notify, url: str
) -> None:
    with pytest.raises(UnsafeURL):
        await check_url(url, Allowlist())
    strict = NotifierConfig(database_url=database_url, retry_schedule_s=(0.2,))  # nothing allow-listed
    async with running(NotifierActor(bus_config, strict)):
        d = deliver(Channel.WEBHOOK, url, signing_secret=SECRET)
        await notify.send(d)
        await wait_until(lambda: notify.status_is(d, DeliveryStatus.FAILED), what="the refusal")
        (entry,) = (await notify.log(d.task_run_id)).deliveries
    assert len(entry.attempts) == 1 and "unsafe URL" in (entry.attempts[0].error or "")


async def test_email_without_smtp_fails_with_a_reason(bus_config: BusConfig, database_url: str, notify: Notify) -> None:
    no_smtp = NotifierConfig(database_url=database_url, retry_schedule_s=(0.2,))
    async with running(NotifierActor(bus_config, no_smtp)):
        d = deliver(Channel.EMAIL, "someone@example.org")
        await notify.send(d)
        await wait_until(lambda: notify.status_is(d, DeliveryStatus.FAILED), what="the failure")
        (entry,) = (await notify.log(d.task_run_id)).deliveries
    assert "SMTP_HOST" in (entry.attempts[0].error or "")


@pytest.mark.timeout(120)
async def test_kill_9_while_the_receiver_fails_then_the_delivery_succeeds_once(
    notify: Notify, spawn_actor: Callable[..., Any]
) -> None:
    env = {"AGENTBUS_NOTIFY_RETRY_SCHEDULE": "1,1,1,1,1,1,1,1", "AGENTBUS_OUTBOUND_ALLOW": "127.0.0.1"}
    async with HttpReceiver(fail=1_000) as receiver:
        first = spawn_actor("notifier", env)
        d = deliver(Channel.WEBHOOK, receiver.url, signing_secret=SECRET)
        await notify.send(d)
        await wait_until(lambda: _attempts(notify, d, 1), timeout=30, what="a failed attempt")
        first.kill()
        receiver.fail = 0  # the receiver recovers while no notifier runs
        spawn_actor("notifier", env)
        await wait_until(lambda: notify.status_is(d, DeliveryStatus.DELIVERED), timeout=60, what="the retry")
        await asyncio.sleep(1.5)
    assert len(receiver.requests) == 1
    assert verify_standard_webhook(SECRET, receiver.requests[0].headers, receiver.requests[0].body)


async def _attempts(notify: Notify, d: Deliver, count: int) -> bool:
    try:
        listed = (await notify.log(d.task_run_id)).deliveries
    except BusError:  # the notifier is still starting
        return False
    return bool(listed) and len(listed[0].attempts) >= count


async def test_a_delivery_whose_handler_keeps_failing_ends_failed_with_the_reason(
    bus_config: BusConfig, database_url: str, notify: Notify
) -> None:
    """A dead-lettered Deliver ends its delivery visibly: PostgreSQL refuses to lease the delivery
    for an attempt (every delivery of the command fails), so the command is dead-lettered, and the
    delivery is recorded `failed` with the reason instead of staying `pending` forever."""
    actor = NotifierActor(dataclasses.replace(bus_config, max_deliver=2), config(database_url))
    async with running(actor):
        db = await asyncpg.connect(database_url)
        await db.execute(
            """
            CREATE FUNCTION notifier.refuse_lease() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN RAISE EXCEPTION 'disk full'; END $$;
            CREATE TRIGGER refuse_lease BEFORE UPDATE ON notifier.deliveries FOR EACH ROW
            WHEN (NEW.lease_until IS NOT NULL) EXECUTE FUNCTION notifier.refuse_lease();
            """
        )
        await db.close()
        d = deliver(Channel.IN_APP, "in-app")
        await notify.send(d)
        await wait_until(lambda: notify.status_is(d, DeliveryStatus.FAILED), what="the delivery to end failed")
        (entry,) = (await notify.log(d.task_run_id)).deliveries
    error = entry.attempts[-1].error
    assert error is not None and error.startswith("gave up:")
