"""`python -m actors.conversation`: one conversation process (NATS_URL, DATABASE_URL from the environment)."""

from __future__ import annotations

from actors.conversation.actor import ConversationActor
from actors.conversation.config import ConversationConfig
from bus.actor import main

if __name__ == "__main__":
    main("conversation", lambda bus: ConversationActor(bus, ConversationConfig.from_env()))
