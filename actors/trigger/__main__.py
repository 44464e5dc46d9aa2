"""`python -m actors.trigger`: one trigger process (NATS_URL, DATABASE_URL from the environment)."""

from __future__ import annotations

import asyncio

import uvloop

from actors.trigger.actor import TriggerActor
from actors.trigger.config import TriggerActorConfig
from bus.config import BusConfig
from bus.logging import configure_logging


def main() -> None:
    configure_logging("trigger")
    uvloop.install()
    asyncio.run(TriggerActor(BusConfig.from_env(), TriggerActorConfig.from_env()).run())


if __name__ == "__main__":
    main()
