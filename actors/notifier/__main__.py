"""`python -m actors.notifier`: one notifier process (NATS_URL, DATABASE_URL, SMTP_* from the environment)."""

from __future__ import annotations

from actors.notifier.actor import NotifierActor
from actors.notifier.config import NotifierConfig
from bus.actor import main

if __name__ == "__main__":
    main("notifier", lambda bus: NotifierActor(bus, NotifierConfig.from_env()))
