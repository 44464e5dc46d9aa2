"""`python -m actors.research`: one research process (NATS_URL, DATABASE_URL from the environment)."""

from __future__ import annotations

from actors.research.actor import ResearchActor
from actors.research.config import ResearchConfig
from bus.actor import main

if __name__ == "__main__":
    main("research", lambda bus: ResearchActor(bus, ResearchConfig.from_env()))
