"""`python -m actors.scheduler`: one scheduler process (NATS_URL, DATABASE_URL from the environment)."""

from __future__ import annotations

from actors.scheduler.actor import SchedulerActor
from actors.scheduler.config import SchedulerConfig
from bus.actor import main

if __name__ == "__main__":
    main("scheduler", lambda bus: SchedulerActor(bus, SchedulerConfig.from_env()))
