"""`python -m actors.conversation`: one conversation process (NATS_URL, DATABASE_URL from the environment)."""

from __future__ import annotations

import asyncio

import uvloop

from actors.conversation.actor import ConversationActor
from actors.conversation.config import ConversationConfig
from bus.config import BusConfig
from bus.logging import configure_logging


def main() -> None:
    configure_logging("conversation")
    uvloop.install()
    asyncio.run(ConversationActor(BusConfig.from_env(), ConversationConfig.from_env()).run())


if __name__ == "__main__":
    main()
