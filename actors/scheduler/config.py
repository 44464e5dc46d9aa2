"""Scheduler settings, from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from actors._outbound import Allowlist
from actors._postgres import database_url
from bus.secrets import SecretBox

__all__ = ["SchedulerConfig"]


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    database_url: str
    max_tick_s: float = 1.0  # the ticker looks at least this often, and at once when a task changes
    misfire_grace_s: float = 5.0  # a slot later than this is a misfire (the scheduler was down)
    restart_after_s: float = 10.0  # a task run fired but not started for this long is started again
    batch: int = 100
    allow: Allowlist = field(default_factory=Allowlist)  # AGENTBUS_OUTBOUND_ALLOW, as the notifier
    secrets: SecretBox = field(default_factory=SecretBox.from_env)  # seals the notification secrets at rest

    @classmethod
    def from_env(cls) -> SchedulerConfig:
        return cls(
            database_url=database_url(),
            max_tick_s=float(os.environ.get("AGENTBUS_SCHEDULER_TICK", "1.0")),
            misfire_grace_s=float(os.environ.get("AGENTBUS_MISFIRE_GRACE", "5.0")),
            allow=Allowlist.from_env(),
        )
