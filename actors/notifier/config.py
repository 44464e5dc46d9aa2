"""Notifier settings, from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from actors._outbound import Allowlist
from actors._postgres import database_url

__all__ = ["NotifierConfig"]

DEFAULT_SCHEDULE_S = (5.0, 30.0, 120.0, 600.0, 3600.0)  # then the delivery is marked failed


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


@dataclass(frozen=True, slots=True)
class NotifierConfig:
    database_url: str
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_from: str = "agentbus@localhost"
    smtp_starttls: bool = False
    smtp_tls: bool = False
    allow: Allowlist = field(default_factory=Allowlist)
    retry_schedule_s: tuple[float, ...] = DEFAULT_SCHEDULE_S  # waits before attempts 2, 3, …
    http_timeout_s: float = 10.0

    @classmethod
    def from_env(cls) -> NotifierConfig:
        schedule = os.environ.get("AGENTBUS_NOTIFY_RETRY_SCHEDULE")
        return cls(
            database_url=database_url(),
            smtp_host=os.environ.get("SMTP_HOST") or None,
            smtp_port=int(os.environ.get("SMTP_PORT", "587")),
            smtp_username=os.environ.get("SMTP_USERNAME") or None,
            smtp_password=os.environ.get("SMTP_PASSWORD") or None,
            smtp_from=os.environ.get("SMTP_FROM_EMAIL", "agentbus@localhost"),
            smtp_starttls=_flag("SMTP_STARTTLS"),
            smtp_tls=_flag("SMTP_TLS"),
            allow=Allowlist.from_env(),
            retry_schedule_s=tuple(float(x) for x in schedule.split(",")) if schedule else DEFAULT_SCHEDULE_S,
            http_timeout_s=float(os.environ.get("AGENTBUS_NOTIFY_TIMEOUT", "10")),
        )
