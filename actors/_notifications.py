"""Notifications a finished piece of work sends (a task run, a research job): checking a
NotificationConfig when the work is created, and the notifier commands when it ends."""

from __future__ import annotations

import base64
import secrets

import msgspec

from actors._outbound import Allowlist, UnsafeURL, check_url
from bus import subjects
from bus.errors import BusError
from bus.secrets import SecretBox
from schemas.approvals import Approval
from schemas.errors import ErrorCode
from schemas.notifier import EMAIL_ADDRESS, Channel, Deliver, NotificationConfig

__all__ = ["approvals_notice", "check_channels", "check_notification_config", "deliveries", "new_signing_secret"]

FIELDS = {Channel.EMAIL: "email_address", Channel.SLACK: "slack_webhook_url", Channel.WEBHOOK: "webhook_url"}


def new_signing_secret() -> str:
    """A Standard Webhooks key: `whsec_` + base64 of 24 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _invalid(message: str) -> BusError:
    return BusError(ErrorCode.INVALID, message)


def check_channels(config: NotificationConfig | None) -> None:
    """Every channel names its target; BusError(invalid) saying which is missing."""
    if config is None:
        return
    for channel in config.channels:
        if channel in FIELDS and not getattr(config, FIELDS[channel]):
            raise _invalid(f"notification channel {channel.value} needs {FIELDS[channel]}")
    if config.email_address is not None and not EMAIL_ADDRESS.match(config.email_address):
        raise _invalid(f"email_address must be one address (no list, name or line break): {config.email_address!r}")


async def check_notification_config(config: NotificationConfig | None, allow: Allowlist) -> None:
    """The channels name their targets, and the URLs are public http(s) addresses now (the notifier
    checks again at send time)."""
    check_channels(config)
    for url in (config.slack_webhook_url, config.webhook_url) if config is not None else ():
        if url is not None:
            try:
                await check_url(url, allow)
            except UnsafeURL as e:
                raise _invalid(f"{url}: {e}") from e


def deliveries(
    config: NotificationConfig | None,
    *,
    tenant: str,
    run_id: str,
    task_id: str | None,
    title: str,
    body: str,
    payload: dict[str, object],
    signing_secret: str,
    secrets: SecretBox,
    about: str | None = None,
) -> list[tuple[str, Deliver]]:
    """(subject, command) per channel; the delivery id `<run_id>-<channel>` (`<run_id>-<about>-<channel>` for a
    notice about the run before its end, such as `approval-1`) makes re-sending harmless. `signing_secret` as
    stored by the owner: the command carries it sealed, never in plaintext."""
    if config is None:
        return []
    sealed = secrets.reseal(signing_secret) or signing_secret
    targets = {
        Channel.EMAIL: config.email_address,
        Channel.SLACK: config.slack_webhook_url,
        Channel.WEBHOOK: config.webhook_url,
    }
    out = []
    for channel in config.channels:
        delivery_id = f"{run_id}-{about}-{channel.value}" if about else f"{run_id}-{channel.value}"
        deliver = Deliver(
            delivery_id=delivery_id,
            task_run_id=run_id,
            task_id=task_id,
            channel=channel,
            target=targets.get(channel) or subjects.notifier_event(tenant, delivery_id, "in_app"),
            title=title,
            body=body,
            payload=payload,
            sealed_signing_secret=sealed if channel is Channel.WEBHOOK else None,
        )
        out.append((subjects.notifier_command(tenant, delivery_id), deliver))
    return out


def approvals_notice(approvals: list[Approval], *, what: str) -> tuple[str, str, dict[str, object]]:
    """The title, body and webhook payload telling a task's (or job's) channels that approvals wait."""
    title = f"Approval needed: {', '.join(sorted({a.tool_name for a in approvals}))} in {what}"
    lines = [f"{what} is waiting for a decision on {len(approvals)} tool call(s):", ""]
    for a in approvals:
        expires = f" (expires {a.expires_at.isoformat(timespec='seconds')})" if a.expires_at else ""
        lines.append(f"- {a.tool_name} {a.args} — approval {a.id}{expires}")
    lines += ["", 'Decide each with POST /v1/approvals/{id} and {"decision": "approve" | "deny" | "edit"}.']
    payload: dict[str, object] = {
        "event": "approval_requested",
        "run_id": approvals[0].run_id,
        "approvals": msgspec.to_builtins(approvals),
    }
    return title, "\n".join(lines), payload
