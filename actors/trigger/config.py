"""Trigger actor settings, from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from actors._postgres import database_url
from bus.secrets import SecretBox

__all__ = ["TriggerActorConfig"]


@dataclass(frozen=True, slots=True)
class TriggerActorConfig:
    database_url: str
    tolerance_s: float = 300.0  # a webhook's timestamp may be this far from now, either way
    receipts_keep_s: float = 3600.0  # webhook ids (and firings) remembered; never less than 2 x tolerance
    reconcile_s: float = 10.0  # how often a replica compares its listeners with the triggers table
    waits_s: float = 1.0  # how often a replica answers expired event waits and follows new ones
    sweep_s: float = 60.0  # how often old receipts/firings and orphaned trigger consumers are removed
    debounce_poll_s: float = 1.0  # how often a replica looks for debounced firings another replica left due
    retry_s: float = 1.0  # pause before a listener whose consumer failed tries again
    secrets: SecretBox = field(default_factory=SecretBox.from_env)  # seals the webhook secrets at rest

    def __post_init__(self) -> None:
        if self.tolerance_s <= 0:
            raise ValueError("tolerance_s must be positive")

    @property
    def receipts_keep(self) -> float:
        """A timestamp up to `tolerance` in the future is accepted until `2 x tolerance` after it
        arrived: a receipt must live at least that long, or a replay would get through."""
        return max(self.receipts_keep_s, 2 * self.tolerance_s + 60.0)

    @classmethod
    def from_env(cls) -> TriggerActorConfig:
        return cls(database_url=database_url(), tolerance_s=float(os.environ.get("AGENTBUS_WEBHOOK_TOLERANCE", "300")))
