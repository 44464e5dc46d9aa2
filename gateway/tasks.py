"""/v1/tasks and /v1/task-runs: delegated, scheduled and triggered tasks, their runs and deliveries.

`POST /v1/tasks/webhooks/{id}` takes a triggered task's webhook: it needs no API key (the Standard
Webhooks signature, checked by the trigger actor, is the authentication) and passes the raw body on.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.di import Provide
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.response import Response

from bus import subjects
from bus.errors import BusError
from gateway.answers import FiringStarted, TaskAnswer, TaskPage, TaskRunAnswer, TaskRunPage, WebhookTaken, shown_once
from gateway.caller import Caller, provide_webhook_caller
from gateway.checks import check_notification_config, check_time_zone
from gateway.errors import INTERNAL_MESSAGE, ApiError
from gateway.state import Stored, ident, stored_response
from gateway.views import full_json
from schemas.errors import ErrorCode
from schemas.notifier import DeliveryList, DeliveryRecord, DeliveryView, ListDeliveries, RetryDelivery
from schemas.tasks import (
    CreateTask,
    DeleteTask,
    FiredBy,
    FireTask,
    GetTask,
    GetTaskRun,
    IngestWebhook,
    ListTaskRuns,
    ListTasks,
    SetTaskEnabled,
    TaskChangeFields,
    TaskList,
    TaskRunList,
    TaskRunView,
    TaskSpec,
    TaskType,
    TaskView,
    UpdateTask,
    WebhookAccepted,
)

__all__ = ["TaskController", "TaskRunController", "webhook"]

SCHEDULER = subjects.ActorName.SCHEDULER


class NewTask(TaskSpec, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of `POST /v1/tasks`: the fields of `CreateTask` but its id."""


class TaskChanges(TaskChangeFields, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of `PATCH /v1/tasks/{id}`: the fields of `UpdateTask` but its id."""


async def _checked(caller: Caller, spec: TaskSpec | TaskChangeFields) -> None:
    """What the schema types cannot say: the time zone, the notification targets, the agent exist."""
    check_time_zone(spec.timezone)
    check_notification_config(spec.notification_config)
    await caller.check_agent(agent=spec.agent, pipeline=spec.pipeline if isinstance(spec, TaskSpec) else None)


def _answer(view: TaskView) -> TaskAnswer:
    return TaskAnswer(
        **msgspec.structs.asdict(view.task),
        last_runs=view.last_runs,
        webhook_secret=shown_once(view.webhook_secret),
        notification_secret=shown_once(view.notification_secret),
    )


class TaskController(Controller):
    path = "/v1/tasks"
    tags = ["tasks"]

    @post(
        "/",
        status_code=201,
        summary="Create a task (a delegation runs at once and answers 202)",
        responses={202: ResponseSpec(TaskAnswer, description="a delegation: created, and its run started")},
    )
    async def create(self, caller: Caller, data: JSONBody[NewTask]) -> Response[TaskAnswer]:
        gw = caller.gateway
        digest = caller.idempotency_digest()
        if (stored := await gw.recall(digest)) is not None:
            return stored_response(stored)
        await _checked(caller, data)
        cmd = CreateTask(**msgspec.structs.asdict(data), task_id=gw.make_id(digest, "task"))
        view = await caller.ask(SCHEDULER, "create", cmd, TaskView)
        stored = Stored(status=202 if data.task_type is TaskType.DELEGATION else 201, body=full_json(_answer(view)))
        await gw.remember(digest, stored)
        return stored_response(stored)

    @get("/", summary="List tasks (filter by type and enabled; page with `after`)")
    async def list_tasks(
        self,
        caller: Caller,
        task_type: FromQuery[TaskType | None] = None,
        enabled: FromQuery[bool | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        after: Annotated[str | None, QueryParameter(max_length=200)] = None,
    ) -> TaskPage:
        query = ListTasks(task_type=task_type, enabled=enabled, limit=limit, after=after)
        listed = await caller.ask(SCHEDULER, "list", query, TaskList)
        return TaskPage(tasks=listed.tasks, next_after=listed.next_after)

    @get("/{task_id:str}", summary="A task, its next run time and its last runs")
    async def read(self, caller: Caller, task_id: FromPath[str]) -> TaskAnswer:
        return _answer(await caller.ask(SCHEDULER, "get", GetTask(task_id=ident(task_id)), TaskView))

    @patch("/{task_id:str}", summary="Change a task (a new timing replaces the old one)")
    async def update(self, caller: Caller, task_id: FromPath[str], data: JSONBody[TaskChanges]) -> TaskAnswer:
        cmd = UpdateTask(**msgspec.structs.asdict(data), task_id=ident(task_id))
        await _checked(caller, data)
        return _answer(await caller.ask(SCHEDULER, "update", cmd, TaskView))

    @delete("/{task_id:str}", status_code=200, summary="Delete a task and its runs")
    async def remove(self, caller: Caller, task_id: FromPath[str]) -> TaskAnswer:
        return _answer(await caller.ask(SCHEDULER, "delete", DeleteTask(task_id=ident(task_id)), TaskView))

    @post("/{task_id:str}/execute", status_code=202, summary="Run the task now")
    async def execute(self, caller: Caller, task_id: FromPath[str]) -> FiringStarted:
        task_id = ident(task_id)
        await caller.ask(SCHEDULER, "get", GetTask(task_id=task_id, last_runs=0), TaskView)  # 404 first
        run_id = caller.gateway.make_id(caller.idempotency_digest(), "firing")
        fire = FireTask(task_id=task_id, firing_id=run_id, fired_by=FiredBy.MANUAL)
        await caller.publish(subjects.scheduler_command(caller.tenant, task_id), fire, msg_id=run_id)
        return FiringStarted(task_id=task_id, task_run_id=run_id)

    @post("/{task_id:str}/disable", status_code=200, summary="Pause a task; its schedule is kept")
    async def disable(self, caller: Caller, task_id: FromPath[str]) -> TaskAnswer:
        cmd = SetTaskEnabled(task_id=ident(task_id), enabled=False)
        return _answer(await caller.ask(SCHEDULER, "set_enabled", cmd, TaskView))

    @post("/{task_id:str}/enable", status_code=200, summary="Resume a task")
    async def enable(self, caller: Caller, task_id: FromPath[str]) -> TaskAnswer:
        cmd = SetTaskEnabled(task_id=ident(task_id), enabled=True)
        return _answer(await caller.ask(SCHEDULER, "set_enabled", cmd, TaskView))

    @get("/{task_id:str}/runs", summary="A task's runs, newest first")
    async def runs(
        self,
        caller: Caller,
        task_id: FromPath[str],
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        after: Annotated[str | None, QueryParameter(max_length=200)] = None,
    ) -> TaskRunPage:
        query = ListTaskRuns(task_id=ident(task_id), limit=limit, after=after)
        listed = await caller.ask(SCHEDULER, "list_runs", query, TaskRunList)
        return TaskRunPage(runs=listed.runs, next_after=listed.next_after)


class TaskRunController(Controller):
    path = "/v1/task-runs"
    tags = ["tasks"]

    @get("/{task_run_id:str}", summary="A task run: status, output, usage, and its deliveries")
    async def read(self, caller: Caller, task_run_id: FromPath[str]) -> TaskRunAnswer:
        view = await caller.ask(SCHEDULER, "get_run", GetTaskRun(task_run_id=ident(task_run_id)), TaskRunView)
        run = msgspec.structs.asdict(view.run)
        try:
            query = ListDeliveries(task_run_id=view.run.id)
            listed = await caller.ask(subjects.ActorName.NOTIFIER, "list_deliveries", query, DeliveryList)
        except BusError as e:  # the run is still worth showing when the notifier is away
            why = e.message if e.code is not ErrorCode.INTERNAL else INTERNAL_MESSAGE
            return TaskRunAnswer(**run, deliveries=None, deliveries_error=why)
        return TaskRunAnswer(**run, deliveries=listed.deliveries)

    @post(
        "/{task_run_id:str}/deliveries/{delivery_id:str}/retry", status_code=202, summary="Send a failed delivery again"
    )
    async def retry(self, caller: Caller, task_run_id: FromPath[str], delivery_id: FromPath[str]) -> DeliveryRecord:
        await caller.ask(SCHEDULER, "get_run", GetTaskRun(task_run_id=ident(task_run_id)), TaskRunView)
        if not delivery_id.startswith(task_run_id):
            raise ApiError(ErrorCode.NOT_FOUND, f"no delivery {delivery_id} in task run {task_run_id}")
        retry = RetryDelivery(delivery_id=ident(delivery_id))
        return (await caller.ask(subjects.ActorName.NOTIFIER, "retry", retry, DeliveryView)).delivery


@post(
    "/v1/tasks/webhooks/{task_id:str}",
    status_code=202,
    tags=["tasks"],
    summary="A triggered task's signed webhook",
    dependencies={"caller": Provide(provide_webhook_caller)},
)
async def webhook(request: Request[Any, Any, Any], caller: Caller, task_id: FromPath[str]) -> WebhookTaken:
    headers = request.headers
    missing = [h for h in ("webhook-id", "webhook-timestamp", "webhook-signature") if not headers.get(h)]
    if missing:
        raise ApiError(ErrorCode.UNAUTHORIZED, f"missing Standard Webhooks headers: {', '.join(missing)}")
    body = await request.body()
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise ApiError(ErrorCode.MALFORMED, "the body is not UTF-8") from None
    hook = IngestWebhook(
        task_id=ident(task_id),
        webhook_id=headers["webhook-id"],
        webhook_timestamp=headers["webhook-timestamp"],
        webhook_signature=headers["webhook-signature"],
        body=text,
    )
    accepted = await caller.ask(subjects.ActorName.TRIGGER, "ingest", hook, WebhookAccepted)
    return WebhookTaken(task_id=accepted.task_id, firing_id=accepted.firing_id)
