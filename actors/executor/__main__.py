"""`python -m actors.executor`: one executor process (NATS_URL, DATABASE_URL, AGENTBUS_* from the environment)."""

from __future__ import annotations

import asyncio

import uvloop

from actors.executor.actor import ExecutorActor
from actors.executor.config import ExecutorConfig
from bus.config import BusConfig
from bus.logging import configure_logging


def main() -> None:
    configure_logging("executor")
    uvloop.install()
    asyncio.run(ExecutorActor(BusConfig.from_env(), ExecutorConfig.from_env()).run())


if __name__ == "__main__":
    main()
