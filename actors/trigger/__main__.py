"""`python -m actors.trigger`: one trigger process (NATS_URL, DATABASE_URL from the environment)."""

from __future__ import annotations

from actors.trigger.actor import TriggerActor
from actors.trigger.config import TriggerActorConfig
from bus.actor import main

if __name__ == "__main__":
    main("trigger", lambda bus: TriggerActor(bus, TriggerActorConfig.from_env()))
