"""`python -m actors.notifier`: one notifier process (NATS_URL, DATABASE_URL, SMTP_* from the environment)."""

from __future__ import annotations

import asyncio

import uvloop

from actors.notifier.actor import NotifierActor
from actors.notifier.config import NotifierConfig
from bus.config import BusConfig
from bus.logging import configure_logging


def main() -> None:
    configure_logging("notifier")
    uvloop.install()
    asyncio.run(NotifierActor(BusConfig.from_env(), NotifierConfig.from_env()).run())


if __name__ == "__main__":
    main()
