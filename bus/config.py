"""Bus configuration: a frozen dataclass with defaults, read from the environment once."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["BusConfig"]


@dataclass(frozen=True, slots=True)
class BusConfig:
    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    name: str = "agentbus"
    stream_replicas: int = 1
    run_output_max_age_s: float = 6 * 3600.0  # how long a client can resume a run's output
    event_max_age_s: float = 7 * 24 * 3600.0
    ack_wait_s: float = 30.0  # redelivery delay after a crash; heartbeats keep long work alive
    max_deliver: int = 5
    request_timeout_s: float = 5.0
    # NATS credentials: one seed file for this process, or a directory holding `<role>.nk` per role
    nkey_seed_file: str | None = None
    credentials_dir: str | None = None
    # how often an actor reads its consumers' info for the backlog gauges (bus/metrics.py); 0: never
    metrics_interval_s: float = 15.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, name: str = "agentbus") -> BusConfig:
        e = os.environ if env is None else env
        urls = e.get("NATS_URL", "nats://127.0.0.1:4222")
        d = cls()
        return cls(
            servers=tuple(u.strip() for u in urls.split(",") if u.strip()),
            name=name,
            stream_replicas=int(e.get("AGENTBUS_STREAM_REPLICAS", d.stream_replicas)),
            run_output_max_age_s=float(e.get("AGENTBUS_RUN_OUTPUT_MAX_AGE", d.run_output_max_age_s)),
            event_max_age_s=float(e.get("AGENTBUS_EVENT_MAX_AGE", d.event_max_age_s)),
            ack_wait_s=float(e.get("AGENTBUS_ACK_WAIT", d.ack_wait_s)),
            max_deliver=int(e.get("AGENTBUS_MAX_DELIVER", d.max_deliver)),
            request_timeout_s=float(e.get("AGENTBUS_REQUEST_TIMEOUT", d.request_timeout_s)),
            nkey_seed_file=e.get("NATS_NKEY_SEED_FILE") or None,
            credentials_dir=e.get("AGENTBUS_NATS_CREDENTIALS") or None,
            metrics_interval_s=float(e.get("AGENTBUS_METRICS_INTERVAL", d.metrics_interval_s)),
        )
