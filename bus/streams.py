"""Streams and durable consumers as data, created or updated idempotently at start."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
)
from nats.js.errors import BadRequestError, NotFoundError

from bus import subjects
from bus.config import BusConfig

__all__ = [
    "AUDIT",
    "CONVERSATION_CMD",
    "CONVERSATION_EVT",
    "DLQ",
    "EVENTS",
    "EXECUTOR_CMD",
    "EXECUTOR_EVT",
    "IDEMPOTENCY_BUCKET",
    "NOTIFIER_CMD",
    "NOTIFIER_EVT",
    "RATE_LIMITS_BUCKET",
    "RESEARCH_CMD",
    "RESEARCH_EVT",
    "RUN_OUT",
    "SCHEDULER_CMD",
    "SCHEDULER_EVT",
    "WS_TOKENS_BUCKET",
    "ConsumerSpec",
    "StreamSpec",
    "ensure_consumer",
    "ensure_streams",
]

DUPLICATE_WINDOW_S = 120.0
IDEMPOTENCY_BUCKET = "ab_idempotency"  # the gateway's kept POST answers (gateway/state.py)
RATE_LIMITS_BUCKET = "ab_ratelimits"  # the gateway's GCRA state per key, tenant and webhook task (gateway/gcra.py)
WS_TOKENS_BUCKET = "ab_ws_tokens"  # the gateway's single-use WebSocket tokens (gateway/ws_tokens.py)
log = structlog.get_logger("bus")


@dataclass(frozen=True, slots=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    work_queue: bool = False  # messages leave the stream once acked (commands)
    max_age_s: float | None = None  # None: keep until acked (work queues) or forever
    # streams whose messages this one copies, in the order it stores them (their subjects kept); such a
    # stream has no subjects of its own and no duplicate window (the sources deduplicated already, and
    # two sources may use one Nats-Msg-Id: nats-server would hold back the second for the window)
    sources: tuple[str, ...] = ()

    def config(self, bus: BusConfig) -> StreamConfig:
        max_age = self.max_age_s
        if self.name == RUN_OUT.name:
            max_age = bus.run_output_max_age_s
        elif max_age is None and not self.work_queue and self.name != DLQ.name:
            max_age = bus.event_max_age_s
        return StreamConfig(
            name=self.name,
            subjects=list(self.subjects) or None,
            sources=[StreamSource(name=name) for name in self.sources] or None,
            retention=RetentionPolicy.WORK_QUEUE if self.work_queue else RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=bus.stream_replicas,
            duplicate_window=0 if self.sources else DUPLICATE_WINDOW_S,
            max_age=max_age,
            allow_direct=True,
        )


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """A durable pull consumer shared by every replica of one actor."""

    stream: StreamSpec
    durable: str
    filter_subject: str
    max_ack_pending: int = 1000
    deliver_new: bool = False  # event consumers start at the tail, command consumers at the head

    def config(self, bus: BusConfig) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.durable,
            filter_subject=self.filter_subject,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=bus.ack_wait_s,
            max_deliver=-1,  # the Actor counts deliveries and dead-letters itself, with the reason
            max_ack_pending=self.max_ack_pending,
            deliver_policy=DeliverPolicy.NEW if self.deliver_new else DeliverPolicy.ALL,
        )


CONVERSATION_CMD = StreamSpec("AB_CONVERSATION_CMD", (subjects.conversation_commands(),), work_queue=True)
CONVERSATION_EVT = StreamSpec("AB_CONVERSATION_EVT", (subjects.conversation_events_all(),))
EXECUTOR_CMD = StreamSpec("AB_EXECUTOR_CMD", (subjects.executor_commands(),), work_queue=True)
EXECUTOR_EVT = StreamSpec("AB_EXECUTOR_EVT", (subjects.executor_events(),))
SCHEDULER_CMD = StreamSpec("AB_SCHEDULER_CMD", (subjects.scheduler_commands(),), work_queue=True)
SCHEDULER_EVT = StreamSpec("AB_SCHEDULER_EVT", (subjects.scheduler_events(),))
NOTIFIER_CMD = StreamSpec("AB_NOTIFIER_CMD", (subjects.notifier_commands(),), work_queue=True)
NOTIFIER_EVT = StreamSpec("AB_NOTIFIER_EVT", (subjects.notifier_events(),))
RESEARCH_CMD = StreamSpec("AB_RESEARCH_CMD", (subjects.research_commands(),), work_queue=True)
RESEARCH_EVT = StreamSpec("AB_RESEARCH_EVT", (subjects.research_events(),))
RUN_OUT = StreamSpec("AB_RUN_OUT", (subjects.run_outputs(),))
DLQ = StreamSpec("AB_DLQ", (subjects.dead_letters(),), max_age_s=14 * 24 * 3600.0)
AUDIT = StreamSpec("AB_AUDIT", (subjects.audit_all(),), max_age_s=400 * 24 * 3600.0)  # a year and a bit
# every tenant-visible event in one order (GET /v1/events): one stream sequence is the feed's cursor
EVENTS = StreamSpec(
    "AB_EVENTS", (), sources=(EXECUTOR_EVT.name, SCHEDULER_EVT.name, RESEARCH_EVT.name, NOTIFIER_EVT.name)
)

ALL_STREAMS = (
    CONVERSATION_CMD,
    CONVERSATION_EVT,
    EXECUTOR_CMD,
    EXECUTOR_EVT,
    SCHEDULER_CMD,
    SCHEDULER_EVT,
    NOTIFIER_CMD,
    NOTIFIER_EVT,
    RESEARCH_CMD,
    RESEARCH_EVT,
    RUN_OUT,
    DLQ,
    AUDIT,
    EVENTS,  # after its sources
)


async def ensure_streams(
    js: JetStreamContext, bus: BusConfig, specs: tuple[StreamSpec, ...] = ALL_STREAMS, *, may_update: bool = True
) -> None:
    """Create each stream, or bring an existing one to its declared config (`may_update`: only the
    admin role may; a process role leaves a stream that differs as it is, and says so)."""
    for spec in specs:
        config = spec.config(bus)
        try:
            await js.add_stream(config)
        except BadRequestError:
            if may_update:
                await js.update_stream(config)
            else:
                log.warning("stream differs from its declaration; `agentbus run` (admin) updates it", stream=spec.name)


async def ensure_consumer(js: JetStreamContext, bus: BusConfig, spec: ConsumerSpec) -> None:
    config = spec.config(bus)
    try:
        info = await js.consumer_info(spec.stream.name, spec.durable)
    except NotFoundError:
        await js.add_consumer(spec.stream.name, config)
        return
    current = info.config
    if (current.ack_wait, current.max_ack_pending, current.filter_subject) != (
        config.ack_wait,
        config.max_ack_pending,
        config.filter_subject,
    ):
        await js.add_consumer(spec.stream.name, config)  # add with the same durable name updates it
