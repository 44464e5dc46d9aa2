"""`python -m actors.executor`: one executor process (NATS_URL, DATABASE_URL, AGENTBUS_* from the environment)."""

from __future__ import annotations

from actors.executor.actor import ExecutorActor
from actors.executor.config import ExecutorConfig
from bus.actor import main

if __name__ == "__main__":
    main("executor", lambda bus: ExecutorActor(bus, ExecutorConfig.from_env()))
