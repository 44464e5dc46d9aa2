"""Every Prometheus metric of the platform, defined once, and the HTTP server an actor process serves them on.

prometheus-client (the Prometheus project's own Python client) keeps the samples and writes the
exposition format; nothing here formats text. Metrics live in the process's default registry, so one
process running several actors (tests, an embedding) serves them all, told apart by the `actor` label.

Label sets are bounded: routes are templates, agents and models come from the agents file, subjects are
reduced to their kind (`subject_kind`), dead-letter reasons to a class. No tenant id, run id or other
per-request value is ever a label. See docs/observability.md for the list.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from threading import Thread
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from bus import subjects

__all__ = [
    "APPROVALS_DECIDED",
    "CONSUMER_ACK_PENDING",
    "CONSUMER_PENDING",
    "CONSUMER_REDELIVERED",
    "COST",
    "DEAD_LETTERS",
    "DELIVERIES",
    "HANDLER_SECONDS",
    "HTTP_REQUESTS",
    "HTTP_SECONDS",
    "MESSAGES",
    "RUNS",
    "RUNS_PARKED",
    "SCHEDULER_LAG",
    "TOKENS",
    "TOOL_CALLS",
    "MetricsConfig",
    "MetricsServer",
    "dead_letter_class",
    "subject_kind",
]

# seconds: from a fast ack to a long agent run
HANDLER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

HTTP_REQUESTS = Counter("agentbus_http_requests", "Gateway HTTP requests answered", ["method", "route", "status"])
HTTP_SECONDS = Histogram(
    "agentbus_http_request_duration_seconds",
    "Gateway time from a request's arrival to its response's headers",
    ["method", "route", "status"],
)
RUNS = Counter("agentbus_runs", "Runs ended, by how they ended", ["agent", "model", "status"])
TOKENS = Counter("agentbus_tokens", "Model tokens spent by runs", ["agent", "model", "direction"])
COST = Counter("agentbus_cost_usd", "Priced cost of runs in US dollars (unpriced parts count 0)", ["agent", "model"])
RUNS_PARKED = Counter("agentbus_runs_parked", "Runs parked to wait for approvals or events (schemas/approvals.py)")
APPROVALS_DECIDED = Counter("agentbus_approvals_decided", "Tool-call approvals decided, by decision", ["status"])
TOOL_CALLS = Counter("agentbus_tool_calls", "Tool calls, by tool and outcome", ["tool", "outcome"])
MESSAGES = Counter("agentbus_messages_handled", "Bus messages consumed, by outcome", ["actor", "kind", "outcome"])
HANDLER_SECONDS = Histogram(
    "agentbus_handler_duration_seconds",
    "Time a consumed message spent in its actor's handler",
    ["actor", "kind"],
    buckets=HANDLER_BUCKETS,
)
DEAD_LETTERS = Counter("agentbus_dead_letters", "Messages dead-lettered, by reason class", ["actor", "reason"])
CONSUMER_PENDING = Gauge(
    "agentbus_consumer_pending_messages",
    "Messages in the stream not yet delivered to the consumer",
    ["stream", "consumer"],
)
CONSUMER_ACK_PENDING = Gauge(
    "agentbus_consumer_ack_pending_messages", "Messages delivered and not yet acknowledged", ["stream", "consumer"]
)
CONSUMER_REDELIVERED = Gauge(
    "agentbus_consumer_redelivered_messages",
    "Unacknowledged messages that were delivered more than once",
    ["stream", "consumer"],
)
DELIVERIES = Counter("agentbus_deliveries", "Notification delivery attempts, by result", ["channel", "result"])
SCHEDULER_LAG = Histogram(
    "agentbus_scheduler_fire_lag_seconds",
    "How late a task fired: when it fired minus when it was due",
    buckets=LAG_BUCKETS,
)


def subject_kind(subject: str) -> str:
    """A bounded name for what a subject carries: `executor.cmd`, `executor.cmd.sub`, `executor.evt.finished`,
    `run.out`, ... (never the tenant or entity tokens)."""
    tokens = subject.split(".")
    if len(tokens) < 3:
        return "other"
    if (event := subjects.parse_event(subject)) is not None:
        return f"{event.area}.evt.{event.kind}" if event.kind else f"{event.area}.evt"
    if tokens[2] == "cmd" and (origin := subjects.run_origin(subject)) is not None:
        return f"{tokens[1]}.cmd.{origin.value}"
    if tokens[2] in ("cmd", "svc", "ctl", "out"):
        return f"{tokens[1]}.{tokens[2]}"
    if tokens[1] == "audit" and len(tokens) == 4:  # ab.audit.<tenant>.<action>
        return f"audit.{tokens[3]}"
    return tokens[1] if tokens[1] != "dlq" else f"dlq.{tokens[2]}"


def dead_letter_class(reason: str) -> str:
    """The class of a dead letter's reason text (the text itself is in the DLQ message's headers)."""
    for prefix, name in (("tenant mismatch", "tenant_mismatch"), ("undecodable", "undecodable"), ("failed ", "failed")):
        if reason.startswith(prefix):
            return name
    return "rejected"


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Where an actor process serves /metrics: AGENTBUS_METRICS_PORT (0 or unset: it does not) on
    AGENTBUS_METRICS_HOST (default loopback)."""

    port: int = 0
    host: str = "127.0.0.1"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MetricsConfig:
        e = os.environ if env is None else env
        return cls(port=int(e.get("AGENTBUS_METRICS_PORT") or 0), host=e.get("AGENTBUS_METRICS_HOST") or "127.0.0.1")


class MetricsServer:
    """prometheus-client's own HTTP server (a thread) serving this process's registry on /metrics."""

    def __init__(self, config: MetricsConfig) -> None:
        self.config = config
        self._server: WSGIServer | None = None
        self._thread: Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the metrics server is not started")
        port: int = self._server.server_port
        return port

    def start(self) -> None:
        served: tuple[Any, Any] = start_http_server(self.config.port, addr=self.config.host)
        self._server, self._thread = served

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None
