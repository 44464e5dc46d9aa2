"""One attempt at one delivery: email (SMTP), Slack incoming webhook, or a Standard Webhooks POST.

Every attempt carries the delivery id as its idempotency id (email `Message-ID`, `webhook-id`,
the Slack payload's `delivery_id`), so a receiver can drop the rare duplicate that a crash right
after a successful send, before it was recorded, would cause.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage

import aiosmtplib
import httpx
import msgspec
from standardwebhooks.webhooks import Webhook

from actors._outbound import UnsafeURL, check_url_syntax
from actors.notifier.config import NotifierConfig
from bus.secrets import SecretError
from schemas.notifier import EMAIL_ADDRESS, Deliver

__all__ = ["SendAttempt", "one_recipient", "send_email", "send_http"]

RETRYABLE_HTTP = {408, 425, 429}


@dataclass(frozen=True, slots=True)
class SendAttempt:
    ok: bool
    permanent: bool = False  # retrying cannot help (unsafe URL, no SMTP server configured, a 4xx)
    status_code: int | None = None
    smtp_reply: str | None = None
    error: str | None = None
    retry_after_s: float | None = None


def retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a Retry-After header: a number of seconds, or an HTTP date."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max((when - now).total_seconds(), 0.0)


def one_recipient(target: str) -> bool:
    """The target is exactly one address: no list, display name, or line break to add a header."""
    return EMAIL_ADDRESS.match(target) is not None


async def send_email(config: NotifierConfig, deliver: Deliver) -> SendAttempt:
    if not one_recipient(deliver.target):
        return SendAttempt(ok=False, permanent=True, error="the recipient must be one email address")
    if config.smtp_host is None:
        return SendAttempt(ok=False, permanent=True, error="no SMTP server configured (set SMTP_HOST)")
    message = EmailMessage()
    message["From"] = config.smtp_from
    message["To"] = deliver.target
    message["Subject"] = deliver.title
    message["Message-ID"] = f"<{deliver.delivery_id}@agentbus>"
    message["Date"] = email.utils.formatdate(usegmt=True)
    message.set_content(deliver.body or "(no output)")
    try:
        _, reply = await aiosmtplib.send(
            message,
            hostname=config.smtp_host,
            port=config.smtp_port,
            username=config.smtp_username,
            password=config.smtp_password,
            start_tls=config.starttls,
            use_tls=config.smtp_tls,
            timeout=config.http_timeout_s,
        )
    except aiosmtplib.SMTPRecipientsRefused as e:
        return SendAttempt(ok=False, permanent=True, error=f"recipient refused: {e}")
    except aiosmtplib.SMTPResponseException as e:
        return SendAttempt(ok=False, permanent=500 <= e.code < 600, smtp_reply=f"{e.code} {e.message}", error=str(e))
    except (aiosmtplib.SMTPException, OSError) as e:
        return SendAttempt(ok=False, error=f"{type(e).__name__}: {e}")
    return SendAttempt(ok=True, smtp_reply=reply)


def _body(deliver: Deliver) -> bytes:
    if deliver.channel == "slack":
        return msgspec.json.encode({"text": f"*{deliver.title}*\n{deliver.body}", "delivery_id": deliver.delivery_id})
    return msgspec.json.encode(
        {"type": "task_run.finished", "delivery_id": deliver.delivery_id, "data": deliver.payload}
    )


def _signing_secret(config: NotifierConfig, deliver: Deliver) -> str | None:
    if deliver.sealed_signing_secret is not None:
        return config.secrets.open(deliver.sealed_signing_secret)
    return deliver.signing_secret  # a command from before sealing


async def send_http(config: NotifierConfig, deliver: Deliver, client: httpx.AsyncClient) -> SendAttempt:
    """POST to a Slack incoming webhook or a generic webhook (signed per Standard Webhooks). `client`
    connects only to checked addresses (actors/_outbound_http.py): an unsafe target is refused there."""
    try:
        check_url_syntax(deliver.target)
    except UnsafeURL as e:
        return SendAttempt(ok=False, permanent=True, error=f"unsafe URL: {e}")
    try:
        secret = _signing_secret(config, deliver)
    except SecretError as e:
        return SendAttempt(ok=False, permanent=True, error=f"the signing secret cannot be opened: {e}")
    body = _body(deliver)
    headers = {"content-type": "application/json", "user-agent": "agentbus-notifier"}
    if deliver.channel == "webhook":
        now = datetime.now(UTC)
        headers["webhook-id"] = deliver.delivery_id
        headers["webhook-timestamp"] = str(int(now.timestamp()))
        if secret:
            headers["webhook-signature"] = Webhook(secret).sign(deliver.delivery_id, now, body.decode())
    try:
        response = await client.post(deliver.target, content=body, headers=headers, follow_redirects=False)
    except UnsafeURL as e:
        return SendAttempt(ok=False, permanent=True, error=f"unsafe URL: {e}")
    except httpx.HTTPError as e:
        return SendAttempt(ok=False, error=f"{type(e).__name__}: {e}")
    code = response.status_code
    if 200 <= code < 300:
        return SendAttempt(ok=True, status_code=code)
    wait = retry_after(response.headers.get("retry-after"), datetime.now(UTC))
    permanent = 300 <= code < 500 and code not in RETRYABLE_HTTP
    return SendAttempt(ok=False, permanent=permanent, status_code=code, error=response.text[:500], retry_after_s=wait)
