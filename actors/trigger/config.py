"""Trigger actor settings, from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass

from actors._postgres import database_url

__all__ = ["TriggerActorConfig"]


@dataclass(frozen=True, slots=True)
class TriggerActorConfig:
    database_url: str
    tolerance_s: float = 300.0  # a webhook's timestamp may be this far from now, either way
    receipts_keep_s: float = 3600.0  # webhook ids remembered (must be longer than the tolerance)

    @classmethod
    def from_env(cls) -> TriggerActorConfig:
        return cls(database_url=database_url(), tolerance_s=float(os.environ.get("AGENTBUS_WEBHOOK_TOLERANCE", "300")))
