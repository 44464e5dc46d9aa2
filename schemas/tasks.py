"""Scheduler and trigger actors: task definitions, task runs, firings and webhook ingestion."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated

import msgspec

from schemas._base import Message, Record
from schemas.errors import ErrorReply
from schemas.fields import AgentName, CronExpression, NatsPattern, PipelineName, Prompt, Seconds, TimeZone
from schemas.notifier import NotificationConfig
from schemas.runs import Usage

__all__ = [
    "UPDATABLE_FIELDS",
    "CreateTask",
    "DeleteTask",
    "FireTask",
    "FiredBy",
    "GetTask",
    "GetTaskRun",
    "IngestWebhook",
    "ListTaskRuns",
    "ListTasks",
    "MisfirePolicy",
    "OverlapPolicy",
    "RegisterTrigger",
    "SchedulerCommand",
    "SchedulerEvent",
    "SchedulerQuery",
    "SchedulerReply",
    "SetTaskEnabled",
    "Task",
    "TaskChangeFields",
    "TaskChanged",
    "TaskList",
    "TaskRun",
    "TaskRunFinished",
    "TaskRunList",
    "TaskRunStatus",
    "TaskRunView",
    "TaskSpec",
    "TaskType",
    "TaskView",
    "TriggerConfig",
    "TriggerQuery",
    "TriggerRegistered",
    "TriggerReply",
    "UnregisterTrigger",
    "UpdateTask",
    "WebhookAccepted",
]


class TaskType(enum.StrEnum):
    DELEGATION = "delegation"  # runs once, at once
    SCHEDULED = "scheduled"  # cron, interval or one-shot run_at
    TRIGGERED = "triggered"  # a signed webhook or a bus subject


class MisfirePolicy(enum.StrEnum):
    """What a scheduler that was down does with the firings it missed."""

    SKIP = "skip"
    RUN_ONCE = "run_once"


class OverlapPolicy(enum.StrEnum):
    """What a firing does while the task's previous run is still going."""

    SKIP = "skip"
    ALLOW = "allow"


class FiredBy(enum.StrEnum):
    NOW = "now"  # delegation
    SCHEDULE = "schedule"
    MANUAL = "manual"  # POST /v1/tasks/{id}/execute
    WEBHOOK = "webhook"
    EVENT = "event"  # a bus subject


class TaskRunStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # overlap policy `skip` while the previous run was going


class TriggerConfig(Record, frozen=True, kw_only=True):
    """`webhook` when `subject` is None; else fire on every bus message matching `subject`
    (a NATS pattern, only messages of the task's tenant) whose JSON fields equal `filter`."""

    subject: NatsPattern | None = None
    # dotted path in the event's JSON -> expected value (as text)
    filter: Annotated[dict[Annotated[str, msgspec.Meta(max_length=200)], str], msgspec.Meta(max_length=20)] = {}
    # events closer together than this start one run (the last one)
    debounce_seconds: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 0.0
    max_runs_per_minute: Annotated[int, msgspec.Meta(ge=1, le=100_000)] | None = None


class Task(Record, frozen=True, kw_only=True):
    id: str
    tenant: str
    task_type: TaskType
    prompt: str
    agent: str
    pipeline: str | None = None
    inputs: dict[str, object] = {}
    schedule_expression: str | None = None
    interval_seconds: float | None = None
    run_at: datetime | None = None
    timezone: str = "UTC"
    trigger_config: TriggerConfig | None = None
    notification_config: NotificationConfig | None = None
    thread: bool = False  # True: every firing continues one conversation
    misfire_policy: MisfirePolicy = MisfirePolicy.RUN_ONCE
    overlap_policy: OverlapPolicy = OverlapPolicy.SKIP
    enabled: bool = True
    next_run_at: datetime | None = None
    webhook_url: str | None = None  # path of the ingestion endpoint, for webhook-triggered tasks
    created_at: datetime
    updated_at: datetime


class TaskRun(Record, frozen=True, kw_only=True):
    id: str  # also the executor run id
    task_id: str
    tenant: str
    fired_by: FiredBy
    scheduled_for: datetime | None = None
    conversation_id: str | None = None
    status: TaskRunStatus
    output: str | None = None
    error: str | None = None
    event: dict[str, object] | None = None  # the triggering event's payload
    usage: Usage = Usage()
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


# --- scheduler commands: ab.scheduler.cmd.<tenant>.<task_id> -------------------------------------


class FireTask(Message, frozen=True, kw_only=True, tag="fire_task"):
    """Start a task run now (run-now, a webhook, a bus event). `firing_id` dedupes the firing."""

    task_id: str
    firing_id: str
    fired_by: FiredBy
    event: dict[str, object] | None = None


SchedulerCommand = FireTask


# --- scheduler queries: ab.scheduler.svc.<verb> --------------------------------------------------


class TaskSpec(Record, frozen=True, kw_only=True):
    """What a client says about a new task: the fields of `CreateTask`, and the body of `POST /v1/tasks`."""

    task_type: TaskType
    prompt: Prompt
    agent: AgentName | None = None
    pipeline: PipelineName | None = None  # run this pipeline (over the prompt) instead of one agent
    inputs: dict[str, object] = {}
    schedule_expression: CronExpression | None = None
    interval_seconds: Seconds | None = None
    run_at: datetime | None = None  # with a UTC offset, that instant; without, a wall-clock time in `timezone`
    timezone: TimeZone = "UTC"
    trigger_config: TriggerConfig | None = None
    notification_config: NotificationConfig | None = None
    thread: bool = False
    misfire_policy: MisfirePolicy = MisfirePolicy.RUN_ONCE
    overlap_policy: OverlapPolicy = OverlapPolicy.SKIP


class CreateTask(TaskSpec, Message, frozen=True, kw_only=True, tag="create_task"):
    task_id: str


class TaskChangeFields(Record, frozen=True, kw_only=True):
    """What a client may change in a task (None: leave as is): `UpdateTask`, and the body of `PATCH /v1/tasks/{id}`.

    Each field is the `TaskSpec` field of the same name, or None (tests/test_bad_input.py checks they agree).
    """

    prompt: Prompt | None = None
    agent: AgentName | None = None
    inputs: dict[str, object] | None = None
    schedule_expression: CronExpression | None = None
    interval_seconds: Seconds | None = None
    run_at: datetime | None = None
    timezone: TimeZone | None = None
    trigger_config: TriggerConfig | None = None
    notification_config: NotificationConfig | None = None
    thread: bool | None = None
    misfire_policy: MisfirePolicy | None = None
    overlap_policy: OverlapPolicy | None = None


UPDATABLE_FIELDS: tuple[str, ...] = tuple(f.name for f in msgspec.structs.fields(TaskChangeFields))


class UpdateTask(TaskChangeFields, Message, frozen=True, kw_only=True, tag="update_task"):
    """Only the fields that are set change (None: leave as is)."""

    task_id: str


class GetTask(Message, frozen=True, kw_only=True, tag="get_task"):
    task_id: str
    last_runs: int = 5


class ListTasks(Message, frozen=True, kw_only=True, tag="list_tasks"):
    task_type: TaskType | None = None
    enabled: bool | None = None
    limit: int = 50
    after: str | None = None  # a task id: the page after it


class DeleteTask(Message, frozen=True, kw_only=True, tag="delete_task"):
    task_id: str


class SetTaskEnabled(Message, frozen=True, kw_only=True, tag="set_task_enabled"):
    task_id: str
    enabled: bool


class ListTaskRuns(Message, frozen=True, kw_only=True, tag="list_task_runs"):
    task_id: str
    limit: int = 50
    after: str | None = None


class GetTaskRun(Message, frozen=True, kw_only=True, tag="get_task_run"):
    task_run_id: str


SchedulerQuery = (
    CreateTask | UpdateTask | GetTask | ListTasks | DeleteTask | SetTaskEnabled | ListTaskRuns | GetTaskRun | FireTask
)


class TaskView(Message, frozen=True, kw_only=True, tag="task"):
    task: Task
    last_runs: list[TaskRun] = []
    webhook_secret: str | None = None  # only in the reply that created a webhook-triggered task
    notification_secret: str | None = None  # whsec_ key signing this task's webhook notifications; only on create


class TaskList(Message, frozen=True, kw_only=True, tag="task_list"):
    tasks: list[Task]
    next_after: str | None = None


class TaskRunView(Message, frozen=True, kw_only=True, tag="task_run"):
    run: TaskRun


class TaskRunList(Message, frozen=True, kw_only=True, tag="task_run_list"):
    runs: list[TaskRun]
    next_after: str | None = None


SchedulerReply = TaskView | TaskList | TaskRunView | TaskRunList | ErrorReply


# --- scheduler events: ab.scheduler.evt.<tenant>.<task_id>.<kind> --------------------------------


class TaskChanged(Message, frozen=True, kw_only=True, tag="task_changed"):
    """kind `changed`: a task was created, updated, enabled/disabled or deleted (`deleted`)."""

    task: Task
    deleted: bool = False


class TaskRunFinished(Message, frozen=True, kw_only=True, tag="task_run_finished"):
    """kind `completed` / `failed`: what a chained task's bus trigger listens to."""

    run: TaskRun


SchedulerEvent = TaskChanged | TaskRunFinished


# --- trigger queries: ab.trigger.svc.<verb> ------------------------------------------------------


class RegisterTrigger(Message, frozen=True, kw_only=True, tag="register_trigger"):
    """Make a triggered task fire: a webhook gets a new `whsec_` secret, returned once."""

    task_id: str
    config: TriggerConfig


class UnregisterTrigger(Message, frozen=True, kw_only=True, tag="unregister_trigger"):
    task_id: str


class IngestWebhook(Message, frozen=True, kw_only=True, tag="ingest_webhook"):
    """A webhook as the gateway received it: the three Standard Webhooks headers and the raw body."""

    task_id: str
    webhook_id: str
    webhook_timestamp: str
    webhook_signature: str
    body: str


TriggerQuery = RegisterTrigger | UnregisterTrigger | IngestWebhook


class TriggerRegistered(Message, frozen=True, kw_only=True, tag="trigger_registered"):
    task_id: str
    webhook_secret: str | None = None


class WebhookAccepted(Message, frozen=True, kw_only=True, tag="webhook_accepted"):
    task_id: str
    firing_id: str


TriggerReply = TriggerRegistered | WebhookAccepted | ErrorReply
