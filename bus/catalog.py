"""What travels where: every subject builder of `bus/subjects.py` with the messages it carries and who reads it.

One table for the bus as an API (bus/asyncapi.py renders it as an AsyncAPI document). Who may *publish*
on a channel is not written here: it follows from the nats-server permissions (`bus/permissions.py`),
so the document says what the server enforces. What is written here is checked against the code by
tests/test_asyncapi.py: every durable consumer and service endpoint the actors declare in `routes()`
(decoded with the types named here), every `ab.*` builder of `bus/subjects.py`, and every `Message`
of `schemas/`.
"""

from __future__ import annotations

import enum
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bus import subjects
from bus.credentials import Role
from bus.headers import Header
from bus.subjects import ActorName, RunOrigin
from schemas._base import Message
from schemas.agents import AgentCatalog, ListAgents
from schemas.approvals import (
    ApprovalList,
    ApprovalView,
    DecideApproval,
    GetApproval,
    ListApprovals,
    RunWaiting,
    Steered,
    SteerRun,
    WatchEvent,
    Watching,
)
from schemas.audit import AuditAction, AuditEvent
from schemas.conversation import (
    ContinueConversation,
    ConversationCommand,
    ConversationEvent,
    ConversationList,
    ConversationView,
    CreateConversation,
    GetConversation,
    GetHistory,
    HistoryPage,
    ListConversations,
    ListMessages,
    MessageList,
    SetContext,
)
from schemas.errors import ErrorReply
from schemas.health import HealthCheck, HealthReport
from schemas.models import ListModels, ModelList
from schemas.notifier import (
    DeliveryFinished,
    DeliveryList,
    DeliveryStatus,
    DeliveryView,
    InAppNotification,
    ListDeliveries,
    NotifierCommand,
    RetryDelivery,
)
from schemas.research import (
    CancelResearch,
    DocumentHits,
    DocumentList,
    DocumentView,
    FetchedPage,
    FetchPage,
    GetDocument,
    GetResearch,
    IngestDocument,
    ListDocuments,
    ListResearch,
    PhaseChanged,
    ResearchCommand,
    ResearchFinished,
    ResearchList,
    ResearchView,
    SearchDocuments,
    StartResearch,
    SubrunFinished,
    SubrunStarted,
)
from schemas.runs import (
    CancelRun,
    ExecutorCommand,
    GetRun,
    GetRunTree,
    ListRuns,
    RunFinished,
    RunList,
    RunOutput,
    RunTree,
    RunView,
)
from schemas.stats import ConversationCount, CountConversations, CountRuns, CountTasks, RunCount, TaskCount
from schemas.tasks import (
    CreateTask,
    DeleteTask,
    GetTask,
    GetTaskRun,
    IngestWebhook,
    ListTaskRuns,
    ListTasks,
    RegisterTrigger,
    SchedulerCommand,
    SetTaskEnabled,
    TaskChanged,
    TaskList,
    TaskRunFinished,
    TaskRunList,
    TaskRunStatus,
    TaskRunView,
    TaskView,
    TriggerRegistered,
    UnregisterTrigger,
    UpdateTask,
    WebhookAccepted,
)
from schemas.tools import CallTool, ListTools, ToolCatalog, ToolResult
from schemas.usage import GetUsage, UsageReport

__all__ = [
    "CHANNELS",
    "CONSUMING_ACTORS",
    "DEAD_HEADERS",
    "ERROR_REPLY",
    "HEADERS",
    "PARAMETERS",
    "SERVICES",
    "TRACE_HEADERS",
    "Channel",
    "Endpoint",
    "Kind",
    "Reader",
    "Reading",
]

A = ActorName
R = Role


class Kind(enum.StrEnum):
    """What a channel is, in the layout of docs/bus.md."""

    COMMAND = "command"  # JetStream work queue, one durable consumer per actor
    EVENT = "event"  # JetStream, fan-out and replayable
    OUTPUT = "output"  # one run's output stream, ordered and resumable
    CONTROL = "control"  # core NATS broadcast to every replica, not stored
    AUDIT = "audit"
    DEAD_LETTER = "dead_letter"


class Reading(enum.StrEnum):
    """How a reader gets a channel's messages."""

    DURABLE = "durable"  # a durable pull consumer shared by the actor's replicas (`Consumer` in routes())
    REPLAY = "replay"  # an ordered ephemeral consumer from any stream sequence (`Bus.replay`)
    SUBSCRIPTION = "subscription"  # a core NATS subscription
    TRIGGER = "trigger"  # a task's subject trigger: one durable per trigger (`trigger-task-<task id>`)


@dataclass(frozen=True, slots=True)
class Reader:
    role: Role
    reading: Reading
    durable: str | None = None  # the durable consumer, for Reading.DURABLE
    why: str = ""


@dataclass(frozen=True, slots=True)
class Channel:
    """One subject builder (or one group of its `kind` values) and what it carries."""

    name: str  # the AsyncAPI channel id
    builder: Callable[..., str]
    kind: Kind
    messages: tuple[type[Message], ...]
    summary: str
    readers: tuple[Reader, ...] = ()
    fixed: Mapping[str, object] = field(default_factory=dict)  # builder arguments fixed in the address
    values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # the values a parameter takes


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A service endpoint `ab.<actor>.svc.<verb>`: the request it decodes and the reply it answers."""

    actor: ActorName
    verb: str
    request: type[Message]
    reply: type[Message]
    summary: str = ""
    # each replica's own `ab.<actor>.svc.<verb>.<instance_id>` (not the queue group any one replica answers)
    per_instance: bool = False


# the actors with durable consumers: each dead-letters on its own ab.dlq.<actor>
CONSUMING_ACTORS = (A.CONVERSATION, A.EXECUTOR, A.SCHEDULER, A.TRIGGER, A.RESEARCH, A.NOTIFIER)
_TRIGGERS = Reader(R.TRIGGER, Reading.TRIGGER, why="a triggered task may follow any event subject")
_FEED = "GET /v1/events (through AB_EVENTS, which sources the event streams)"
_FEED_READER = Reader(R.GATEWAY, Reading.REPLAY, why=_FEED)


def members(union: object) -> tuple[type[Message], ...]:
    """The message types of a union the actors decode with (or of one type)."""
    return typing.get_args(union) or (union,)


CHANNELS: tuple[Channel, ...] = (
    # --- commands ------------------------------------------------------------------------------
    Channel(
        "conversation.command",
        subjects.conversation_command,
        Kind.COMMAND,
        members(ConversationCommand),
        "A user turn or a sidekick's new context, in order per conversation.",
        (Reader(R.CONVERSATION, Reading.DURABLE, "conversation-cmd"),),
    ),
    Channel(
        "executor.command",
        subjects.executor_command,
        Kind.COMMAND,
        members(ExecutorCommand),
        "A run asked for on the tenant's behalf (a turn, a task, a pipeline), or its cancel.",
        (Reader(R.EXECUTOR, Reading.DURABLE, "executor-cmd"),),
    ),
    Channel(
        "executor.subrun",
        subjects.executor_subrun_command,
        Kind.COMMAND,
        members(ExecutorCommand),
        "A run the platform starts for itself: `sub` a pipeline step or hand-off (by the executor), "
        "`research` a research job's sub-run (by the research actor); or the next step of a parked run: "
        "`resume` once every call it waits on is decided (by the executor), `resolve` an event wait's "
        "answer (by the trigger actor).",
        (Reader(R.EXECUTOR, Reading.DURABLE, "executor-cmd"),),
        values={"origin": tuple(o.value for o in RunOrigin)},
    ),
    Channel(
        "scheduler.command",
        subjects.scheduler_command,
        Kind.COMMAND,
        members(SchedulerCommand),
        "Fire a task now (run now, a webhook, a bus event).",
        (Reader(R.SCHEDULER, Reading.DURABLE, "scheduler-cmd"),),
    ),
    Channel(
        "research.command",
        subjects.research_command,
        Kind.COMMAND,
        members(ResearchCommand),
        "Start a research job (held with heartbeats until it ends) or cancel it.",
        (Reader(R.RESEARCH, Reading.DURABLE, "research-cmd"),),
    ),
    Channel(
        "notifier.command",
        subjects.notifier_command,
        Kind.COMMAND,
        members(NotifierCommand),
        "Deliver one notification on one channel, or deliver a failed one again.",
        (Reader(R.NOTIFIER, Reading.DURABLE, "notifier-cmd"),),
    ),
    # --- events --------------------------------------------------------------------------------
    Channel(
        "conversation.turn",
        subjects.conversation_event,
        Kind.EVENT,
        members(ConversationEvent),
        "A turn ended: its reply is stored, or it failed.",
        (Reader(R.GATEWAY, Reading.SUBSCRIPTION, why="a turn posted without streaming waits on it"), _TRIGGERS),
        fixed={"kind": "turn"},
    ),
    Channel(
        "executor.finished",
        subjects.executor_finished,
        Kind.EVENT,
        (RunFinished,),
        "A run reached a terminal state.",
        (
            Reader(R.CONVERSATION, Reading.DURABLE, "conversation-runs", "ends a turn"),
            Reader(R.SCHEDULER, Reading.DURABLE, "scheduler-runs", "ends a task run"),
            Reader(R.EXECUTOR, Reading.REPLAY, why="a pipeline step's or hand-off's end"),
            Reader(R.RESEARCH, Reading.REPLAY, why="a research sub-run's end"),
            _FEED_READER,
            _TRIGGERS,
        ),
    ),
    Channel(
        "executor.waiting",
        subjects.executor_waiting,
        Kind.EVENT,
        (RunWaiting,),
        "A run parked: the tool calls it waits on (approvals, event waits); it holds no slot meanwhile.",
        (
            Reader(R.SCHEDULER, Reading.DURABLE, "scheduler-waits", "tells a task's channels an approval waits"),
            Reader(R.RESEARCH, Reading.DURABLE, "research-waits", "tells a research job's channels an approval waits"),
            _FEED_READER,
            _TRIGGERS,
        ),
    ),
    Channel(
        "scheduler.changed",
        subjects.scheduler_event,
        Kind.EVENT,
        (TaskChanged,),
        "A task was created, changed, enabled, disabled or deleted.",
        (
            Reader(R.TRIGGER, Reading.DURABLE, "trigger-tasks", "stops or restarts the task's triggers"),
            _FEED_READER,
            _TRIGGERS,
        ),
        fixed={"kind": "changed"},
    ),
    Channel(
        "scheduler.run_finished",
        subjects.scheduler_event,
        Kind.EVENT,
        (TaskRunFinished,),
        "A task run ended (the kind is its status).",
        (_FEED_READER, _TRIGGERS),
        values={"kind": (TaskRunStatus.COMPLETED.value, TaskRunStatus.FAILED.value)},
    ),
    Channel(
        "research.phase",
        subjects.research_event,
        Kind.EVENT,
        (PhaseChanged,),
        "A research job moved to its next phase.",
        (Reader(R.GATEWAY, Reading.REPLAY, why=f"the job's SSE stream; {_FEED}"), _TRIGGERS),
        fixed={"kind": "phase"},
    ),
    Channel(
        "research.subrun_started",
        subjects.research_event,
        Kind.EVENT,
        (SubrunStarted,),
        "A research job started a sub-run.",
        (Reader(R.GATEWAY, Reading.REPLAY, why=f"the job's SSE stream; {_FEED}"), _TRIGGERS),
        fixed={"kind": "subrun_started"},
    ),
    Channel(
        "research.subrun_finished",
        subjects.research_event,
        Kind.EVENT,
        (SubrunFinished,),
        "A research sub-run ended.",
        (Reader(R.GATEWAY, Reading.REPLAY, why=f"the job's SSE stream; {_FEED}"), _TRIGGERS),
        fixed={"kind": "subrun_finished"},
    ),
    Channel(
        "research.finished",
        subjects.research_event,
        Kind.EVENT,
        (ResearchFinished,),
        "A research job ended, with its report or its error.",
        (Reader(R.GATEWAY, Reading.REPLAY, why=f"the job's SSE stream; {_FEED}"), _TRIGGERS),
        fixed={"kind": "finished"},
    ),
    Channel(
        "notifier.delivery_finished",
        subjects.notifier_event,
        Kind.EVENT,
        (DeliveryFinished,),
        "A delivery was sent, or given up on (the kind is its status).",
        (_FEED_READER, _TRIGGERS),
        values={"kind": (DeliveryStatus.DELIVERED.value, DeliveryStatus.FAILED.value)},
    ),
    Channel(
        "notifier.in_app",
        subjects.notifier_event,
        Kind.EVENT,
        (InAppNotification,),
        "An in-app notification (what `/v1/notifications` lists and streams).",
        (Reader(R.GATEWAY, Reading.REPLAY, why=f"GET /v1/notifications and its stream; {_FEED}"), _TRIGGERS),
        fixed={"kind": "in_app"},
    ),
    # --- run output, control, audit, dead letters ---------------------------------------------
    Channel(
        "run.output",
        subjects.run_output,
        Kind.OUTPUT,
        members(RunOutput),
        "One run's output in order: accepted, started, token deltas, tool calls, usage, then its end.",
        (
            Reader(R.GATEWAY, Reading.REPLAY, why="relays it as SSE or WebSocket frames, resumable"),
            Reader(R.EXECUTOR, Reading.REPLAY, why="whether a redelivered run has output already (a direct get)"),
        ),
    ),
    Channel(
        "executor.cancel",
        subjects.executor_cancel,
        Kind.CONTROL,
        (CancelRun,),
        "Cancel a run, on every executor replica at once (core NATS, not stored).",
        (Reader(R.EXECUTOR, Reading.SUBSCRIPTION, why="the replica running it stops it"),),
    ),
    Channel(
        "executor.steer",
        subjects.executor_steer,
        Kind.CONTROL,
        (SteerRun,),
        "A steering message stored for a run, on every executor replica at once (core NATS, not stored).",
        (Reader(R.EXECUTOR, Reading.SUBSCRIPTION, why="the replica running it gives it to the agent"),),
    ),
    Channel(
        "research.cancel",
        subjects.research_cancel,
        Kind.CONTROL,
        (CancelResearch,),
        "Cancel a research job, on every research replica at once (core NATS, not stored).",
        (Reader(R.RESEARCH, Reading.SUBSCRIPTION, why="the replica driving it stops it"),),
    ),
    Channel(
        "audit",
        subjects.audit,
        Kind.AUDIT,
        (AuditEvent,),
        "The audit log: who (key id) did what, when (stream AB_AUDIT, 400 days).",
        (Reader(R.GATEWAY, Reading.REPLAY, why="GET /v1/audit"),),
        values={"action": tuple(a.value for a in AuditAction)},
    ),
    Channel(
        "dead_letters",
        subjects.dead_letter,
        Kind.DEAD_LETTER,
        (),  # the original message, whatever it was: see bus/asyncapi.py's DeadLetter
        "Messages an actor gave up on, with their original body and headers and the reason in Ab-Dead-* headers.",
        (
            Reader(R.GATEWAY, Reading.REPLAY, why="GET /v1/dead-letters: list, read, replay, discard (docs/events.md)"),
            Reader(R.ADMIN, Reading.REPLAY, why="the nats CLI: inspect, replay, discard (docs/bus.md)"),
        ),
        values={"actor": tuple(a.value for a in CONSUMING_ACTORS)},
    ),
)

_HEALTH = tuple(
    Endpoint(actor, "health", HealthCheck, HealthReport, "the actor's dependencies") for actor in CONSUMING_ACTORS
)
_INSTANCE_HEALTH = tuple(
    Endpoint(actor, "health", HealthCheck, HealthReport, "one replica's dependencies (GET /v1/status)", True)
    for actor in CONSUMING_ACTORS
)

SERVICES: tuple[Endpoint, ...] = (
    Endpoint(A.CONVERSATION, "create", CreateConversation, ConversationView),
    Endpoint(A.CONVERSATION, "get", GetConversation, ConversationView),
    Endpoint(A.CONVERSATION, "list", ListConversations, ConversationList),
    Endpoint(A.CONVERSATION, "count", CountConversations, ConversationCount),
    Endpoint(A.CONVERSATION, "messages", ListMessages, MessageList),
    Endpoint(A.CONVERSATION, "context", SetContext, ConversationView),
    Endpoint(A.CONVERSATION, "continue", ContinueConversation, ConversationView),
    Endpoint(A.CONVERSATION, "history", GetHistory, HistoryPage, "one page of a RunRequest's history_ref"),
    Endpoint(A.EXECUTOR, "get_run", GetRun, RunView),
    Endpoint(A.EXECUTOR, "cancel", CancelRun, RunView),
    Endpoint(A.EXECUTOR, "steer", SteerRun, Steered, "a user message for a run still going"),
    Endpoint(A.EXECUTOR, "tree", GetRunTree, RunTree),
    Endpoint(A.EXECUTOR, "list_runs", ListRuns, RunList),
    Endpoint(A.EXECUTOR, "run_counts", CountRuns, RunCount),
    Endpoint(A.EXECUTOR, "list_approvals", ListApprovals, ApprovalList),
    Endpoint(A.EXECUTOR, "get_approval", GetApproval, ApprovalView),
    Endpoint(A.EXECUTOR, "decide_approval", DecideApproval, ApprovalView, "approve, deny or edit one tool call"),
    Endpoint(A.EXECUTOR, "agents", ListAgents, AgentCatalog),
    Endpoint(A.EXECUTOR, "usage", GetUsage, UsageReport),
    Endpoint(A.EXECUTOR, "models", ListModels, ModelList),
    Endpoint(A.EXECUTOR, "tools", ListTools, ToolCatalog),
    Endpoint(A.EXECUTOR, "call_tool", CallTool, ToolResult),
    Endpoint(A.SCHEDULER, "create", CreateTask, TaskView),
    Endpoint(A.SCHEDULER, "get", GetTask, TaskView),
    Endpoint(A.SCHEDULER, "list", ListTasks, TaskList),
    Endpoint(A.SCHEDULER, "update", UpdateTask, TaskView),
    Endpoint(A.SCHEDULER, "delete", DeleteTask, TaskView),
    Endpoint(A.SCHEDULER, "set_enabled", SetTaskEnabled, TaskView),
    Endpoint(A.SCHEDULER, "list_runs", ListTaskRuns, TaskRunList),
    Endpoint(A.SCHEDULER, "get_run", GetTaskRun, TaskRunView),
    Endpoint(A.SCHEDULER, "count", CountTasks, TaskCount),
    Endpoint(A.TRIGGER, "watch", WatchEvent, Watching, "follow a parked run's event wait until it resolves"),
    Endpoint(A.TRIGGER, "register", RegisterTrigger, TriggerRegistered),
    Endpoint(A.TRIGGER, "unregister", UnregisterTrigger, TriggerRegistered),
    Endpoint(A.TRIGGER, "ingest", IngestWebhook, WebhookAccepted, "a signed webhook, checked and fired"),
    Endpoint(A.NOTIFIER, "list_deliveries", ListDeliveries, DeliveryList),
    Endpoint(A.NOTIFIER, "retry", RetryDelivery, DeliveryView),
    Endpoint(A.RESEARCH, "start", StartResearch, ResearchView, "records the job and queues it"),
    Endpoint(A.RESEARCH, "get_research", GetResearch, ResearchView),
    Endpoint(A.RESEARCH, "list_research", ListResearch, ResearchList),
    Endpoint(A.RESEARCH, "cancel_research", CancelResearch, ResearchView),
    Endpoint(A.RESEARCH, "ingest", IngestDocument, DocumentView),
    Endpoint(A.RESEARCH, "get_document", GetDocument, DocumentView),
    Endpoint(A.RESEARCH, "list_documents", ListDocuments, DocumentList),
    Endpoint(A.RESEARCH, "search", SearchDocuments, DocumentHits, "the search_documents tool"),
    Endpoint(A.RESEARCH, "fetch", FetchPage, FetchedPage, "the fetch_url tool"),
    *_HEALTH,
    *_INSTANCE_HEALTH,
)

# every endpoint may answer this instead of its reply (`Bus.request` raises it as BusError)
ERROR_REPLY = ErrorReply

# header -> (set on, meaning); every member of `Header` must be here (the document fails to build otherwise)
HEADERS: Mapping[Header, tuple[str, str]] = {
    Header.MSG_ID: (
        "JetStream publishes that must happen once",
        "dedupe key: a retried publish inside the 2-minute window is stored once",
    ),
    Header.TENANT: ("every message", "the tenant; a command whose subject names another tenant is dead-lettered"),
    Header.CORRELATION_ID: ("every message", "one id for everything one HTTP request caused"),
    Header.TRACEPARENT: ("every message", "W3C trace context; each hop is a new span of the same trace"),
    Header.SENT_AT: ("every message", "publish time, unix nanoseconds, as text"),
    Header.RUN_ID: ("messages about a run", "the run"),
    Header.DEAD_REASON: ("dead letters", "why it was dead-lettered (up to 2,000 characters)"),
    Header.DEAD_SUBJECT: ("dead letters", "the subject it was consumed from: where to replay it"),
    Header.DEAD_STREAM_SEQ: ("dead letters", "its sequence in the original stream"),
    Header.DEAD_DELIVERIES: ("dead letters", "how many times it was delivered"),
}
TRACE_HEADERS = (Header.TENANT, Header.CORRELATION_ID, Header.TRACEPARENT, Header.SENT_AT)  # what Trace.headers() sets
DEAD_HEADERS = (Header.DEAD_REASON, Header.DEAD_SUBJECT, Header.DEAD_STREAM_SEQ, Header.DEAD_DELIVERIES)

# a subject parameter's meaning, by the builder's argument name
PARAMETERS: Mapping[str, str] = {
    "tenant": "the tenant (equal to the Ab-Tenant header)",
    "conversation_id": "the conversation",
    "run_id": "the run",
    "task_id": "the task",
    "job_id": "the research job",
    "delivery_id": "the delivery (`<task run id>-<channel>`)",
    "kind": "the event's kind",
    "origin": "who started the run (`RunOrigin`)",
    "action": "what was done (`AuditAction`)",
    "actor": "the actor that gave up on the message",
    "instance_id": "one replica: its NATS micro service id, as `$SRV.PING` answers it",
}
