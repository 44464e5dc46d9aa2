"""Notifier actor: deliveries of a result to email, Slack, signed webhooks or an in-app event."""

from __future__ import annotations

import enum
import re
from datetime import datetime

from schemas._base import Message, Record
from schemas.errors import ErrorReply

__all__ = [
    "EMAIL_ADDRESS",
    "Channel",
    "Deliver",
    "DeliveryAttempt",
    "DeliveryFinished",
    "DeliveryList",
    "DeliveryRecord",
    "DeliveryStatus",
    "DeliveryView",
    "InAppNotification",
    "ListDeliveries",
    "NotificationConfig",
    "NotifierCommand",
    "NotifierEvent",
    "NotifierQuery",
    "NotifierReply",
    "RetryDelivery",
]

# One address, nothing else: a dot-atom local part (no quotes, commas, semicolons, angle brackets,
# spaces or line breaks, so no list, display name or header injection) @ a host name.
EMAIL_ADDRESS = re.compile(
    r"\A[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z"
)


class Channel(enum.StrEnum):
    EMAIL = "email"
    SLACK = "slack"
    WEBHOOK = "webhook"
    IN_APP = "in_app"


class NotificationConfig(Record, frozen=True, kw_only=True):
    """Where a task's results go (the `notification_config` of a task)."""

    channels: list[Channel] = []
    email_address: str | None = None
    slack_webhook_url: str | None = None
    webhook_url: str | None = None


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # accepted, not yet attempted or waiting for its next attempt
    DELIVERED = "delivered"
    FAILED = "failed"  # gave up after the retry schedule


class DeliveryAttempt(Record, frozen=True, kw_only=True):
    number: int
    at: datetime
    ok: bool
    status_code: int | None = None  # HTTP status
    smtp_reply: str | None = None  # e.g. "250 OK"
    error: str | None = None
    retry_after_s: float | None = None


class DeliveryRecord(Record, frozen=True, kw_only=True):
    id: str
    tenant: str
    task_run_id: str
    task_id: str | None = None
    channel: Channel
    target: str  # email address or URL (in_app: the event subject)
    status: DeliveryStatus
    attempts: list[DeliveryAttempt] = []
    next_attempt_at: datetime | None = None
    created_at: datetime
    delivered_at: datetime | None = None


# --- commands: ab.notifier.cmd.<tenant>.<delivery_id> -------------------------------------------


class Deliver(Message, frozen=True, kw_only=True, tag="deliver"):
    """Send one result through one channel. `delivery_id` is the idempotency id the receiver sees
    (webhook-id header, Message-ID, Slack payload); one per (task run, channel)."""

    delivery_id: str
    task_run_id: str
    task_id: str | None = None
    channel: Channel
    target: str
    title: str
    body: str  # Markdown / plain text of the result
    payload: dict[str, object] = {}  # the JSON a webhook receives (and the in-app event carries)
    signing_secret: str | None = None  # no longer sent (commands from before sealing had it in plaintext)
    sealed_signing_secret: str | None = None  # the whsec_ key signing a webhook, sealed (bus/secrets.py)


class RetryDelivery(Message, frozen=True, kw_only=True, tag="retry_delivery"):
    """Try a delivery again now (also after it was marked failed)."""

    delivery_id: str


NotifierCommand = Deliver | RetryDelivery


# --- queries: ab.notifier.svc.<verb> -------------------------------------------------------------


class ListDeliveries(Message, frozen=True, kw_only=True, tag="list_deliveries"):
    task_run_id: str


class DeliveryList(Message, frozen=True, kw_only=True, tag="delivery_list"):
    deliveries: list[DeliveryRecord]


class DeliveryView(Message, frozen=True, kw_only=True, tag="delivery"):
    delivery: DeliveryRecord


NotifierQuery = ListDeliveries | RetryDelivery
NotifierReply = DeliveryList | DeliveryView | ErrorReply


# --- events: ab.notifier.evt.<tenant>.<delivery_id>.<kind> -------------------------------------


class DeliveryFinished(Message, frozen=True, kw_only=True, tag="delivery_finished"):
    """A delivery succeeded or was given up (`delivery.status` says which)."""

    delivery: DeliveryRecord


class InAppNotification(Message, frozen=True, kw_only=True, tag="in_app_notification"):
    """The in-app channel: an event applications subscribe to on ab.notifier.evt.<tenant>.*.in_app."""

    delivery_id: str
    task_run_id: str
    task_id: str | None = None
    title: str
    body: str
    payload: dict[str, object] = {}


NotifierEvent = DeliveryFinished | InAppNotification
