"""Notifier settings, from the environment."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from actors._outbound import Allowlist
from actors._postgres import database_url
from bus.secrets import SecretBox

__all__ = ["NotifierConfig"]

DEFAULT_SCHEDULE_S = (5.0, 30.0, 120.0, 600.0, 3600.0)  # then the delivery is marked failed


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def _optional_flag(name: str) -> bool | None:
    value = os.environ.get(name, "").strip().lower()
    return None if not value else value in ("1", "true", "yes", "on")


def loopback(host: str) -> bool:
    """`localhost` or a loopback address: an SMTP server on this machine, where STARTTLS protects nothing."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class NotifierConfig:
    database_url: str
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_from: str = "agentbus@localhost"
    smtp_starttls: bool | None = None  # None: on, unless the SMTP host is loopback (SMTP_STARTTLS)
    smtp_tls: bool = False
    allow: Allowlist = field(default_factory=Allowlist)
    secrets: SecretBox = field(default_factory=SecretBox.from_env)  # opens the webhook signing secrets
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
            smtp_starttls=_optional_flag("SMTP_STARTTLS"),
            smtp_tls=_flag("SMTP_TLS"),
            allow=Allowlist.from_env(),
            retry_schedule_s=tuple(float(x) for x in schedule.split(",")) if schedule else DEFAULT_SCHEDULE_S,
            http_timeout_s=float(os.environ.get("AGENTBUS_NOTIFY_TIMEOUT", "10")),
        )

    @property
    def starttls(self) -> bool:
        """Whether to upgrade the SMTP connection with STARTTLS (and refuse a server that cannot):
        as set, else on for every SMTP host but a loopback one, and never with implicit TLS."""
        if self.smtp_tls:
            return False
        if self.smtp_starttls is not None:
            return self.smtp_starttls
        return self.smtp_host is None or not loopback(self.smtp_host)
