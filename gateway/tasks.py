"""/v1/tasks and /v1/task-runs: delegated, scheduled and triggered tasks, their runs and deliveries.

`POST /v1/tasks/webhooks/{id}` takes a triggered task's webhook: it needs no API key (the Standard
Webhooks signature, checked by the trigger actor, is the authentication) and passes the raw body on.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.datastructures import State
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from bus import subjects
from bus.errors import BusError
from bus.headers import Trace
from gateway.auth import Tenant
from gateway.checks import check_notification_config, check_time_zone
from gateway.errors import ApiError
from gateway.state import Gateway, Stored, gateway_of, ident
from gateway.views import full, full_json
from schemas.errors import ErrorCode
from schemas.notifier import DeliveryList, DeliveryView, ListDeliveries, RetryDelivery
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


async def _checked(gw: Gateway, trace: Trace, spec: TaskSpec | TaskChangeFields) -> None:
    """What the schema types cannot say: the time zone, the notification targets, the agent exist."""
    check_time_zone(spec.timezone)
    check_notification_config(spec.notification_config)
    await gw.agents.check(trace, agent=spec.agent, pipeline=spec.pipeline if isinstance(spec, TaskSpec) else None)


def _json(status: int, body: Any) -> Response[bytes]:
    return Response(full_json(body), status_code=status, media_type="application/json")


async def _ask(gw: Gateway, actor: subjects.ActorName, verb: str, message: Any, reply: type[Any], trace: Trace) -> Any:
    return await gw.ask(actor, verb, message, reply, trace)


def _task_body(view: TaskView) -> dict[str, Any]:
    body: dict[str, Any] = full(view.task)
    body["last_runs"] = full(view.last_runs)
    if view.webhook_secret is not None:
        body["webhook_secret"] = view.webhook_secret  # shown once
    if view.notification_secret is not None:
        body["notification_secret"] = view.notification_secret  # shown once
    return body


class TaskController(Controller):
    path = "/v1/tasks"
    tags = ["tasks"]

    @post(
        "/",
        summary="Create a task (a delegation runs at once and answers 202)",
        responses={202: ResponseSpec(None, description="a delegation: created, and its run started")},
    )
    async def create(
        self, request: Request[Any, Any, Any], state: State, tenant: Tenant, data: JSONBody[NewTask]
    ) -> Response[Any]:
        gw = gateway_of(state)
        digest = gw.idempotency_digest(request, tenant)
        if (stored := await gw.recall(digest)) is not None:
            return Response(stored.body, status_code=stored.status, media_type="application/json")
        trace = gw.trace(tenant, request)
        await _checked(gw, trace, data)
        cmd = CreateTask(**msgspec.structs.asdict(data), task_id=gw.make_id(digest, "task"))
        view: TaskView = await _ask(gw, SCHEDULER, "create", cmd, TaskView, trace)
        status = 202 if data.task_type is TaskType.DELEGATION else 201
        body = msgspec.json.encode(_task_body(view))
        await gw.remember(digest, Stored(status=status, body=body))
        return Response(body, status_code=status, media_type="application/json")

    @get("/", summary="List tasks (filter by type and enabled; page with `after`)")
    async def list_tasks(
        self,
        request: Request[Any, Any, Any],
        state: State,
        tenant: Tenant,
        task_type: FromQuery[TaskType | None] = None,
        enabled: FromQuery[bool | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        after: Annotated[str | None, QueryParameter(max_length=200)] = None,
    ) -> Response[Any]:
        gw = gateway_of(state)
        query = ListTasks(task_type=task_type, enabled=enabled, limit=limit, after=after)
        listed: TaskList = await _ask(gw, SCHEDULER, "list", query, TaskList, gw.trace(tenant, request))
        return _json(200, {"tasks": listed.tasks, "next_after": listed.next_after})

    @get("/{task_id:str}", summary="A task, its next run time and its last runs")
    async def read(
        self, request: Request[Any, Any, Any], state: State, tenant: Tenant, task_id: FromPath[str]
    ) -> Response[Any]:
        gw = gateway_of(state)
        view: TaskView = await _ask(
            gw, SCHEDULER, "get", GetTask(task_id=ident(task_id)), TaskView, gw.trace(tenant, request)
        )
        return _json(200, _task_body(view))

    @patch("/{task_id:str}", summary="Change a task (a new timing replaces the old one)")
    async def update(
        self,
        request: Request[Any, Any, Any],
        state: State,
        tenant: Tenant,
        task_id: FromPath[str],
        data: JSONBody[TaskChanges],
    ) -> Response[Any]:
        gw = gateway_of(state)
        trace = gw.trace(tenant, request)
        cmd = UpdateTask(**msgspec.structs.asdict(data), task_id=ident(task_id))
        await _checked(gw, trace, data)
        view: TaskView = await _ask(gw, SCHEDULER, "update", cmd, TaskView, trace)
        return _json(200, _task_body(view))

    @delete("/{task_id:str}", status_code=200, summary="Delete a task and its runs")
    async def remove(
        self, request: Request[Any, Any, Any], state: State, tenant: Tenant, task_id: FromPath[str]
    ) -> Response[Any]:
        gw = gateway_of(state)
        view: TaskView = await _ask(
            gw, SCHEDULER, "delete", DeleteTask(task_id=ident(task_id)), TaskView, gw.trace(tenant, request)
        )
        return _json(200, _task_body(view))

    @post("/{task_id:str}/execute", status_code=202, summary="Run the task now")
    async def execute(
        self, request: Request[Any, Any, Any], state: State, tenant: Tenant, task_id: FromPath[str]
    ) -> Response[Any]:
        gw = gateway_of(state)
        trace = gw.trace(tenant, request)
        task_id = ident(task_id)
        await _ask(gw, SCHEDULER, "get", GetTask(task_id=task_id, last_runs=0), TaskView, trace)  # 404 first
        digest = gw.idempotency_digest(request, tenant)
        run_id = gw.make_id(digest, "firing")
        fire = FireTask(task_id=task_id, firing_id=run_id, fired_by=FiredBy.MANUAL)
        await gw.bus.publish(subjects.scheduler_command(tenant, task_id), fire, trace=trace, msg_id=run_id)
        return _json(202, {"task_id": task_id, "task_run_id": run_id})

    @post("/{task_id:str}/disable", status_code=200, summary="Pause a task; its schedule is kept")
    async def disable(
        self, request: Request[Any, Any, Any], state: State, tenant: Tenant, task_id: FromPath[str]
    ) -> Response[Any]:
        return await _set_enabled(gateway_of(state), request, tenant, task_id, enabled=False)

    @post("/{task_id:str}/enable", status_code=200, summary="Resume a task")
    async def enable(
        self, request: Request[Any, Any, Any], state: State, tenant: Tenant, task_id: FromPath[str]
    ) -> Response[Any]:
        return await _set_enabled(gateway_of(state), request, tenant, task_id, enabled=True)

    @get("/{task_id:str}/runs", summary="A task's runs, newest first")
    async def runs(
        self,
        request: Request[Any, Any, Any],
        state: State,
        tenant: Tenant,
        task_id: FromPath[str],
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        after: Annotated[str | None, QueryParameter(max_length=200)] = None,
    ) -> Response[Any]:
        gw = gateway_of(state)
        query = ListTaskRuns(task_id=ident(task_id), limit=limit, after=after)
        listed: TaskRunList = await _ask(gw, SCHEDULER, "list_runs", query, TaskRunList, gw.trace(tenant, request))
        return _json(200, {"runs": listed.runs, "next_after": listed.next_after})


async def _set_enabled(
    gw: Gateway, request: Request[Any, Any, Any], tenant: str, task_id: str, *, enabled: bool
) -> Response[Any]:
    cmd = SetTaskEnabled(task_id=ident(task_id), enabled=enabled)
    view: TaskView = await _ask(gw, SCHEDULER, "set_enabled", cmd, TaskView, gw.trace(tenant, request))
    return _json(200, _task_body(view))


class TaskRunController(Controller):
    path = "/v1/task-runs"
    tags = ["tasks"]

    @get("/{task_run_id:str}", summary="A task run: status, output, usage, and its deliveries")
    async def read(
        self, request: Request[Any, Any, Any], state: State, tenant: Tenant, task_run_id: FromPath[str]
    ) -> Response[Any]:
        gw = gateway_of(state)
        trace = gw.trace(tenant, request)
        view: TaskRunView = await _ask(
            gw, SCHEDULER, "get_run", GetTaskRun(task_run_id=ident(task_run_id)), TaskRunView, trace
        )
        body: dict[str, Any] = full(view.run)
        try:
            listed: DeliveryList = await _ask(
                gw,
                subjects.ActorName.NOTIFIER,
                "list_deliveries",
                ListDeliveries(task_run_id=view.run.id),
                DeliveryList,
                trace,
            )
            body["deliveries"] = full(listed.deliveries)
        except BusError as e:  # the run is still worth showing when the notifier is away
            body["deliveries"] = None
            body["deliveries_error"] = e.message if e.code is not ErrorCode.INTERNAL else "internal error"
        return _json(200, body)

    @post(
        "/{task_run_id:str}/deliveries/{delivery_id:str}/retry", status_code=202, summary="Send a failed delivery again"
    )
    async def retry(
        self,
        request: Request[Any, Any, Any],
        state: State,
        tenant: Tenant,
        task_run_id: FromPath[str],
        delivery_id: FromPath[str],
    ) -> Response[Any]:
        gw = gateway_of(state)
        trace = gw.trace(tenant, request)
        await _ask(gw, SCHEDULER, "get_run", GetTaskRun(task_run_id=ident(task_run_id)), TaskRunView, trace)
        if not delivery_id.startswith(task_run_id):
            raise ApiError(ErrorCode.NOT_FOUND, f"no delivery {delivery_id} in task run {task_run_id}")
        view: DeliveryView = await _ask(
            gw, subjects.ActorName.NOTIFIER, "retry", RetryDelivery(delivery_id=ident(delivery_id)), DeliveryView, trace
        )
        return _json(202, view.delivery)


@post("/v1/tasks/webhooks/{task_id:str}", status_code=202, tags=["tasks"], summary="A triggered task's signed webhook")
async def webhook(request: Request[Any, Any, Any], state: State, task_id: FromPath[str]) -> Response[Any]:
    gw = gateway_of(state)
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
    accepted: WebhookAccepted = await _ask(
        gw, subjects.ActorName.TRIGGER, "ingest", hook, WebhookAccepted, gw.trace("webhook", request)
    )
    return _json(202, {"task_id": accepted.task_id, "firing_id": accepted.firing_id})
