"""Checks of request values that a `msgspec.Meta` cannot express, made before anything is sent on the bus."""

from __future__ import annotations

from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.errors import ApiError
from schemas.errors import ErrorCode
from schemas.notifier import EMAIL_ADDRESS, NotificationConfig

__all__ = ["check_notification_config", "check_time_zone"]

MAX_URL = 2_048
MAX_EMAIL = 320


def _invalid(message: str) -> ApiError:
    return ApiError(ErrorCode.INVALID, message)


def check_time_zone(name: str | None) -> None:
    """The name is an IANA zone this machine knows (the schema's pattern already kept out paths and long names)."""
    if name is None:
        return
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise _invalid(f"unknown time zone {name!r}: use an IANA name like Europe/Paris") from None


def check_notification_config(config: NotificationConfig | None) -> None:
    """Targets of a sane size and shape; whether a URL's host is public the owning actor checks (DNS)."""
    if config is None:
        return
    address = config.email_address
    if address is not None and (
        len(address) > MAX_EMAIL or not EMAIL_ADDRESS.match(address) or len(address.split("@")[0]) > 64
    ):
        raise _invalid(
            f"email_address must be one email address (at most {MAX_EMAIL} characters; no list, name or line break)"
        )
    for field in ("slack_webhook_url", "webhook_url"):
        url: str | None = getattr(config, field)
        if url is None:
            continue
        if len(url) > MAX_URL or any(c.isspace() or c == "\x00" for c in url):
            raise _invalid(f"{field} must be a URL of at most {MAX_URL} characters, without spaces")
        try:
            parts = urlsplit(url)
            _ = parts.port
        except ValueError:
            raise _invalid(f"{field} is not a URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _invalid(f"{field} must be an absolute http or https URL")
