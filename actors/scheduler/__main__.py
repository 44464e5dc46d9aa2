"""`python -m actors.scheduler`: one scheduler process (NATS_URL, DATABASE_URL from the environment)."""

from __future__ import annotations

import asyncio

import uvloop

from actors.scheduler.actor import SchedulerActor
from actors.scheduler.config import SchedulerConfig
from bus.config import BusConfig
from bus.logging import configure_logging


def main() -> None:
    configure_logging("scheduler")
    uvloop.install()
    asyncio.run(SchedulerActor(BusConfig.from_env(), SchedulerConfig.from_env()).run())


if __name__ == "__main__":
    main()
