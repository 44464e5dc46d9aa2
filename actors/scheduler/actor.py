"""The scheduler: owns tasks, fires them on time (or when told), and follows each firing to its end.

A firing is a task run whose id is also the run id. It starts as a conversation turn (a new
conversation per firing, or the task's one thread), so the executor runs it like any chat turn;
its RunFinished ends the task run, announces TaskRunFinished (what chained tasks listen to) and
asks the notifier for one delivery per channel.

Exactly once per (task, scheduled time): replicas claim due tasks with `FOR UPDATE SKIP LOCKED`,
and a timed run is unique on (task, scheduled_for). A run is recorded before it is started; one
that was recorded but not started (a crash in between) is started again by the next tick, and
starting is idempotent (the conversation is created by id, the message published with the run id
as its message id).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import structlog

from actors._notifications import (
    approvals_notice,
    check_channels,
    check_notification_config,
    deliveries,
    new_signing_secret,
)
from actors._postgres import DATABASE_DOWN, Conn, open_pool
from actors._postgres import health as postgres_health
from actors.scheduler import store
from actors.scheduler.clock import Clock, SystemClock
from actors.scheduler.config import SchedulerConfig
from actors.scheduler.timing import Timing, TimingError, shortest_gap_s, validate
from bus import metrics, subjects
from bus.actor import Actor, Consumer, Delivery, Endpoint
from bus.config import BusConfig
from bus.errors import BusError
from bus.headers import Trace, new_id
from bus.quotas import MIN_INTERVAL, quota_exceeded
from bus.streams import EXECUTOR_EVT, SCHEDULER_CMD, ConsumerSpec
from bus.tenants import TenantSettingsCache
from schemas._base import Message
from schemas.approvals import RunWaiting
from schemas.conversation import ConversationView, CreateConversation, Pattern, Policy, PostMessage
from schemas.errors import ErrorCode
from schemas.runs import RunCancelled, RunCompleted, RunFailed, RunFinished, Usage
from schemas.stats import CountTasks, TaskCount
from schemas.tasks import (
    UPDATABLE_FIELDS,
    CreateTask,
    DeleteTask,
    FiredBy,
    FireTask,
    GetTask,
    GetTaskRun,
    ListTaskRuns,
    ListTasks,
    MisfirePolicy,
    OverlapPolicy,
    RegisterTrigger,
    SetTaskEnabled,
    Task,
    TaskChanged,
    TaskList,
    TaskRun,
    TaskRunFinished,
    TaskRunList,
    TaskRunStatus,
    TaskRunView,
    TaskType,
    TaskView,
    TriggerConfig,
    TriggerRegistered,
    UnregisterTrigger,
    UpdateTask,
)
from schemas.tenants import Quotas

__all__ = ["SchedulerActor"]

MIGRATIONS = Path(__file__).parent / "migrations"
PAST_RUN_AT = timedelta(minutes=1)  # a one-shot time further back than this is refused as a mistake
AFTER_COMMIT_WAIT_S = 1.0  # how long a reply waits for what its commit announces (see _after_commit)
log = structlog.get_logger("scheduler")


def _timing(task: Task) -> Timing:
    return Timing(
        schedule_expression=task.schedule_expression,
        interval_seconds=task.interval_seconds,
        run_at=task.run_at,
        timezone=task.timezone,
    )


def _invalid(message: str) -> BusError:
    return BusError(ErrorCode.INVALID, message)


class SchedulerActor(Actor):
    name = subjects.ActorName.SCHEDULER
    unavailable_errors = DATABASE_DOWN
    description = "tasks: delegated, scheduled and triggered firings"

    def __init__(self, bus_config: BusConfig, config: SchedulerConfig, *, clock: Clock | None = None) -> None:
        super().__init__(bus_config)
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self._pool: Any = None
        self._wake = asyncio.Event()
        self._tenants: TenantSettingsCache | None = None

    def routes(self) -> Sequence[Consumer[Any] | Endpoint[Any]]:
        return (
            Consumer(
                ConsumerSpec(SCHEDULER_CMD, "scheduler-cmd", subjects.scheduler_commands()), FireTask, self._on_fire
            ),
            Consumer(
                ConsumerSpec(EXECUTOR_EVT, "scheduler-runs", subjects.executor_finished_all()),
                RunFinished,
                self._on_finished,
            ),
            Consumer(
                ConsumerSpec(EXECUTOR_EVT, "scheduler-waits", subjects.executor_waiting_all(), deliver_new=True),
                RunWaiting,
                self._on_waiting,
            ),
            Endpoint("create", CreateTask, self._create),
            Endpoint("get", GetTask, self._get),
            Endpoint("list", ListTasks, self._list),
            Endpoint("update", UpdateTask, self._update),
            Endpoint("delete", DeleteTask, self._delete),
            Endpoint("set_enabled", SetTaskEnabled, self._set_enabled),
            Endpoint("list_runs", ListTaskRuns, self._list_runs),
            Endpoint("get_run", GetTaskRun, self._get_run),
            Endpoint("count", CountTasks, self._count),
        )

    async def on_start(self) -> None:
        self._tenants = TenantSettingsCache(self.bus)
        await self._tenants.start()
        self._pool = await open_pool(self.config.database_url, schema="scheduler", migrations=MIGRATIONS)
        async with self._pool.acquire() as conn:
            if resealed := await store.reseal(conn, self.config.secrets):
                log.info("notification secrets sealed under the current key", count=resealed)
        self.spawn(self._ticker(), name="scheduler-ticker")

    async def on_stop(self) -> None:
        if self._tenants is not None:
            await self._tenants.stop()
        if self._pool is not None:
            await self._pool.close()

    async def health_checks(self) -> dict[str, str]:
        return await postgres_health(self._pool)

    # --- the ticker --------------------------------------------------------------------------

    async def _ticker(self) -> None:
        while True:
            self._wake.clear()
            now = self.clock.now()
            try:
                busy = await self._tick(now)
                next_due = await store.next_due(self._pool)
            except Exception:
                log.exception("tick failed")
                busy, next_due = False, None
            delay = 0.0 if busy else self.config.max_tick_s
            if next_due is not None and not busy:
                delay = min(delay, max((next_due - now).total_seconds(), 0.0))
            await self.clock.sleep(delay, self._wake)

    async def _tick(self, now: datetime) -> bool:
        """Fire what is due; True if there may be more right away."""
        grace = timedelta(seconds=self.config.misfire_grace_s)
        fired: list[tuple[Task, TaskRun]] = []
        async with self._pool.acquire() as conn, conn.transaction():
            due = await store.due_tasks(conn, now, self.config.batch)
            for row in due:
                task = row.task
                slot = task.next_run_at
                assert slot is not None
                timing = _timing(task)
                missed = slot < now - grace
                following = timing.next_after(slot)
                if missed:
                    following = timing.next_after(now)  # jump the other firings missed while down
                await store.set_next(conn, task.id, following)
                if missed and task.misfire_policy is MisfirePolicy.SKIP:
                    log.info("misfire skipped", task_id=task.id, slot=slot.isoformat())
                    continue
                skip = task.overlap_policy is OverlapPolicy.SKIP and await store.has_open_run(conn, task.id)
                status = TaskRunStatus.SKIPPED if skip else TaskRunStatus.QUEUED
                run = await store.insert_run(
                    conn,
                    run_id=new_id(),
                    task=task,
                    fired_by=FiredBy.SCHEDULE,
                    now=now,
                    scheduled_for=slot,
                    status=status,
                )
                if run is not None and not skip:
                    fired.append((task, run))
            stale = await store.unstarted_runs(
                conn, now - timedelta(seconds=self.config.restart_after_s), self.config.batch
            )
        for task, run in fired:
            if run.scheduled_for is not None:  # how late it fires: a slow tick, a busy database, a restart
                metrics.SCHEDULER_LAG.observe(max((self.clock.now() - run.scheduled_for).total_seconds(), 0.0))
            await self._start(task, run)
        for run in stale:
            owner = await store.task_row(self._pool, run.task_id)
            if owner is not None:
                await self._start(owner.task, run)
        return len(due) == self.config.batch

    # --- starting a run ----------------------------------------------------------------------

    async def _start(self, task: Task, run: TaskRun) -> None:
        """Start the run as a conversation turn; idempotent, so a restart may call it again."""
        trace = Trace(tenant=task.tenant, run_id=run.id)
        conversation_id = f"thread-{task.id}" if task.thread else run.id
        create = CreateConversation(
            conversation_id=conversation_id,
            pattern=Pattern.TASK,
            agent=f"pipeline:{task.pipeline}" if task.pipeline else task.agent,
            policy=Policy.ENQUEUE,
            metadata={"task_id": task.id},
        )
        prompt = task.prompt
        if task.inputs:
            prompt += "\n\nInputs (JSON):\n" + json.dumps(task.inputs, ensure_ascii=False, indent=1, default=str)
        message = PostMessage(
            conversation_id=conversation_id,
            message_id=f"{run.id}-prompt",
            run_id=run.id,
            content=prompt,
            metadata={"task_id": task.id, "task_run_id": run.id},
            data=run.event,
            stream=False,  # a task's result goes to its channels; nobody watches its tokens
        )
        try:
            await self.bus.request(
                subjects.service(subjects.ActorName.CONVERSATION, "create"), create, ConversationView, trace=trace
            )
            subject = subjects.conversation_command(task.tenant, conversation_id)
            await self.bus.publish(subject, message, trace=trace, msg_id=message.message_id)
        except BusError as e:  # the next tick starts it again
            log.warning("task run not started yet", task_run_id=run.id, error=str(e))
            return
        async with self._pool.acquire() as conn:
            await store.mark_started(conn, run.id, conversation_id, self.clock.now())

    # --- commands ----------------------------------------------------------------------------

    async def _on_fire(self, cmd: FireTask, delivery: Delivery) -> None:
        async with self._pool.acquire() as conn:
            row = await store.get_task(conn, cmd.task_id, delivery.tenant)
            if row is None or not row.task.enabled:
                log.info("firing ignored: no such enabled task", task_id=cmd.task_id)
                return
            run_id = cmd.firing_id if _is_token(cmd.firing_id) else new_id()
            run = await store.insert_run(
                conn, run_id=run_id, task=row.task, fired_by=cmd.fired_by, now=self.clock.now(),
                firing_id=cmd.firing_id, event=cmd.event,
            )  # fmt: skip
            if run is None:  # a redelivery: start it again if it never started
                run = await store.get_run(conn, run_id, delivery.tenant)
        if run is not None and run.status is TaskRunStatus.QUEUED:
            await self._start(row.task, run)

    async def _on_finished(self, finished: RunFinished, delivery: Delivery) -> None:
        result = finished.result
        status = {
            RunCompleted: TaskRunStatus.COMPLETED,
            RunFailed: TaskRunStatus.FAILED,
            RunCancelled: TaskRunStatus.CANCELLED,
        }[type(result)]
        output = result.output if isinstance(result, RunCompleted) else None
        # a failed run's error code leads its text (`budget_exceeded: …`), so the task run's record says how it failed
        if isinstance(result, RunFailed):
            error: str | None = f"{result.error.code.value}: {result.error.message}"
        else:
            error = getattr(result, "reason", None)
        usage = result.usage if isinstance(result, RunCompleted) else None
        await self._end_run(finished.run_id, status, output=output, error=error, usage=usage, trace=delivery.trace)

    async def on_dead_letter(self, body: object | None, delivery: Delivery, reason: str) -> None:
        """A firing or a run's end given up on ends its task run `failed` with the reason, announced
        and notified as any other end (a firing that never recorded a run has nothing to end)."""
        match body:
            case FireTask():
                run_id = body.firing_id if _is_token(body.firing_id) else None
            case RunFinished():
                run_id = body.run_id
            case _:
                run_id = None
        if run_id is not None:
            failed = TaskRunStatus.FAILED
            await self._end_run(
                run_id, failed, output=None, error=f"gave up: {reason}", usage=None, trace=delivery.trace
            )

    async def _end_run(
        self,
        run_id: str,
        status: TaskRunStatus,
        *,
        output: str | None,
        error: str | None,
        usage: Usage | None,
        trace: Trace,
    ) -> None:
        """Record a task run's end, then announce it (TaskRunFinished) and send its notifications;
        both are repeated on a redelivery, and deduped by their ids."""
        async with self._pool.acquire() as conn:
            done = await store.finish_run(
                conn, run_id, status, output=output, error=error, usage=usage or Usage(), now=self.clock.now()
            )
            if done is None:
                return  # not a task run
            run, _ = done
            row = await store.task_row(conn, run.task_id)
        trace = trace.child(run_id=run.id)
        kind = "completed" if run.status is TaskRunStatus.COMPLETED else "failed"
        await self.bus.publish(
            subjects.scheduler_event(run.tenant, run.task_id, kind),
            TaskRunFinished(run=run),
            trace=trace,
            msg_id=f"{run.id}:finished",
        )
        if row is not None:
            await self._notify(row, run, trace)

    async def _on_waiting(self, waiting: RunWaiting, delivery: Delivery) -> None:
        """A task's run parked on approvals: its channels are told, with how to decide each."""
        if waiting.task_id is None or not waiting.approvals:
            return
        async with self._pool.acquire() as conn:
            row = await store.task_row(conn, waiting.task_id)
        if row is None or row.task.tenant != delivery.tenant or row.task.notification_config is None:
            return
        title, body, payload = approvals_notice(waiting.approvals, what=f"task {row.task.id}")
        payload["task_id"] = row.task.id
        about = f"approval-{waiting.approvals[0].park}"
        await self._send(row, waiting.run_id, title, body, payload, delivery.trace, about=about)

    async def _notify(self, row: store.TaskRow, run: TaskRun, trace: Trace) -> None:
        title = f"Task {row.task.id}: {run.status.value}"
        payload: dict[str, object] = msgspec.to_builtins(
            {
                "task_id": row.task.id,
                "task_run_id": run.id,
                "status": run.status,
                "output": run.output,
                "error": run.error,
            }
        )
        await self._send(row, run.id, title, run.output or run.error or "", payload, trace)

    async def _send(
        self,
        row: store.TaskRow,
        run_id: str,
        title: str,
        body: str,
        payload: dict[str, object],
        trace: Trace,
        *,
        about: str | None = None,
    ) -> None:
        """One notice about the task's run through each of its channels (none if it names none)."""
        for subject, deliver in deliveries(
            row.task.notification_config,
            tenant=row.task.tenant,
            run_id=run_id,
            task_id=row.task.id,
            title=title,
            body=body,
            payload=payload,
            signing_secret=row.notification_secret,
            secrets=self.config.secrets,
            about=about,
        ):
            await self.bus.publish(subject, deliver, trace=trace, msg_id=deliver.delivery_id)

    # --- queries -----------------------------------------------------------------------------

    async def _after_commit(self, work: Awaitable[object], *, what: str) -> None:
        """Announce what a commit did without failing the reply that reports the commit: wait briefly,
        then let it go on as an owned task (its publish retries through a failover)."""

        async def announce() -> None:
            try:
                await work
            except Exception:
                log.exception("not announced after commit", what=what)

        await asyncio.wait({self.spawn(announce(), name=what)}, timeout=AFTER_COMMIT_WAIT_S)

    async def _changed(self, task: Task, trace: Trace, *, deleted: bool = False) -> None:
        self._wake.set()
        subject = subjects.scheduler_event(task.tenant, task.id, "changed")
        changed = self.bus.publish(subject, TaskChanged(task=task, deleted=deleted), trace=trace)
        await self._after_commit(changed, what=f"task {task.id} changed")

    def _validated(self, task: Task) -> Task:
        """The task with next_run_at set, or BusError(invalid) saying what is wrong."""
        check_channels(task.notification_config)
        if task.task_type is TaskType.SCHEDULED:
            try:
                timing = validate(
                    schedule_expression=task.schedule_expression,
                    interval_seconds=task.interval_seconds,
                    run_at=task.run_at,
                    timezone=task.timezone,
                )
            except TimingError as e:
                raise _invalid(str(e)) from e
            now = self.clock.now()
            if timing.run_at is not None and timing.run_at < now - PAST_RUN_AT:
                raise _invalid("run_at is in the past")
            self._check_interval(task, timing, now)
            nxt = timing.run_at if timing.run_at is not None else timing.next_after(now)
            return replace_task(task, run_at=timing.run_at, next_run_at=nxt)
        try:
            Timing(schedule_expression=None, interval_seconds=None, run_at=None, timezone=task.timezone)
        except TimingError as e:
            raise _invalid(str(e)) from e
        return replace_task(task, next_run_at=None)

    # --- quotas (counted here, in the tasks' own table, under a per-tenant lock: replicas cannot race past) ----

    def _quotas(self, tenant: str) -> Quotas:
        if self._tenants is None:
            raise RuntimeError("scheduler is not started")
        return self._tenants.get(tenant).quotas

    def _check_interval(self, task: Task, timing: Timing, now: datetime) -> None:
        """quota_exceeded (answered 422) for an interval, or a cron's shortest gap, under `min_interval_s`."""
        least = self._quotas(task.tenant).min_interval_s or 0
        cron_fields = len(task.schedule_expression.split()) if task.schedule_expression else 0
        if not least or (cron_fields == 5 and least <= 60):  # a 5-field cron fires at most once a minute
            return
        gap = shortest_gap_s(timing, below=least, start=now)
        if gap is not None and gap < least:
            raise quota_exceeded(MIN_INTERVAL, least, f"the schedule fires {gap:g} s apart, under {least} s")

    async def _check_counts(self, conn: Conn, task: Task, *, new: bool) -> None:
        """quota_exceeded when one more task (`new`: inserted in this transaction), or one more active schedule, is
        over the tenant's quota."""
        quotas = self._quotas(task.tenant)
        await store.lock_tenant(conn, task.tenant)
        held = 1 if new else 0  # a new task is inserted already: it counts itself
        if new and quotas.tasks and (count := await store.count_tasks(conn, task.tenant) - held) >= quotas.tasks:
            raise quota_exceeded("tasks", quotas.tasks, f"the tenant has {count} tasks")
        scheduling = task.task_type is TaskType.SCHEDULED and task.enabled and task.next_run_at is not None
        if scheduling and quotas.active_schedules:
            count = await store.count_active_schedules(conn, task.tenant) - held
            if count >= quotas.active_schedules:
                raise quota_exceeded("active_schedules", quotas.active_schedules, f"{count} schedules are active")

    async def _create(self, cmd: CreateTask, trace: Trace) -> Message:
        now = self.clock.now()
        if not _is_token(cmd.task_id):
            raise _invalid("task_id must be 1-128 of A-Z a-z 0-9 _ -")
        await check_notification_config(cmd.notification_config, self.config.allow)
        task = self._validated(
            Task(
                id=cmd.task_id,
                tenant=trace.tenant,
                task_type=cmd.task_type,
                prompt=cmd.prompt,
                agent=cmd.agent or "assistant",
                pipeline=cmd.pipeline,
                inputs=cmd.inputs,
                schedule_expression=cmd.schedule_expression,
                interval_seconds=cmd.interval_seconds,
                run_at=cmd.run_at,
                timezone=cmd.timezone,
                trigger_config=cmd.trigger_config or (TriggerConfig() if cmd.task_type is TaskType.TRIGGERED else None),
                notification_config=cmd.notification_config,
                thread=cmd.thread,
                misfire_policy=cmd.misfire_policy,
                overlap_policy=cmd.overlap_policy,
                created_at=now,
                updated_at=now,
            )
        )
        secret = new_signing_secret()
        async with self._pool.acquire() as conn, conn.transaction():
            row = await store.insert_task(conn, task, self.config.secrets.seal(secret))
            if row is not None:  # counted with it, so over a quota undoes it (a retried create is not counted again)
                await self._check_counts(conn, task, new=True)
            existing = await store.get_task(conn, task.id, trace.tenant) if row is None else None
            run: TaskRun | None = None
            if row is not None and task.task_type is TaskType.DELEGATION:
                run = await store.insert_run(
                    conn, run_id=new_id(), task=task, fired_by=FiredBy.NOW, now=now, firing_id=f"{task.id}-now"
                )
        if row is None:
            if existing is None:
                raise BusError(ErrorCode.CONFLICT, f"task id {task.id} is taken")
            # a retried create registers the trigger again (see _register_trigger), unless it was disabled since
            again = await self._register_trigger(existing.task, trace) if existing.task.enabled else None
            return TaskView(task=existing.task, webhook_secret=again)
        webhook_secret = await self._register_trigger(row.task, trace, undo_on_failure=True)
        await self._changed(row.task, trace)
        if run is not None:  # started by the next tick if this does not get through
            await self._after_commit(self._start(row.task, run), what=f"start of task run {run.id}")
        return TaskView(
            task=row.task, webhook_secret=webhook_secret, notification_secret=secret, last_runs=[run] if run else []
        )

    async def _register_trigger(self, task: Task, trace: Trace, *, undo_on_failure: bool = False) -> str | None:
        """Register a triggered task with the trigger actor; its webhook secret (None for a subject trigger
        or another type of task).

        Called after the task's commit: no bus request waits inside an open transaction. With
        `undo_on_failure` (a new task), a refused or unanswered registration undoes the create: the
        task is deleted again (and a registration that may have got through before a timeout is
        withdrawn) and the error answered, so a create yields a task whose trigger is registered, or
        no task. A crash between the commit and the registration leaves the task without its
        trigger until the create is retried: a retried create registers it again, and the trigger
        answers with a new webhook secret (which replaces the one the lost answer carried).
        """
        if task.task_type is not TaskType.TRIGGERED or task.trigger_config is None:
            return None
        try:
            registered = await self.bus.request(
                subjects.service(subjects.ActorName.TRIGGER, "register"),
                RegisterTrigger(task_id=task.id, config=task.trigger_config),
                TriggerRegistered,
                trace=trace,
            )
        except BusError as e:
            if undo_on_failure:
                log.info("trigger not registered: the create is undone", task_id=task.id, error=str(e))
                async with self._pool.acquire() as conn:
                    await store.delete_task(conn, task.id, task.tenant)
                if e.code in (ErrorCode.TIMEOUT, ErrorCode.UNAVAILABLE):
                    await self._unregister_trigger(task, trace)
            raise
        return registered.webhook_secret

    async def _unregister_trigger(self, task: Task, trace: Trace) -> None:
        try:
            await self.bus.request(
                subjects.service(subjects.ActorName.TRIGGER, "unregister"),
                UnregisterTrigger(task_id=task.id),
                TriggerRegistered,
                trace=trace,
            )
        except BusError as e:  # the trigger actor also drops it on the TaskChanged(deleted) event
            log.warning("unregister failed", task_id=task.id, error=str(e))

    async def _found(self, conn: Conn, task_id: str, tenant: str, *, lock: bool = False) -> store.TaskRow:
        row = await store.get_task(conn, task_id, tenant, lock=lock)
        if row is None:
            raise BusError(ErrorCode.NOT_FOUND, f"no task {task_id}")
        return row

    async def _get(self, query: GetTask, trace: Trace) -> Message:
        async with self._pool.acquire() as conn:
            row = await self._found(conn, query.task_id, trace.tenant)
            runs = await store.list_runs(conn, row.task.id, limit=max(0, min(query.last_runs, 50)))
        return TaskView(task=row.task, last_runs=runs)

    async def _count(self, _: CountTasks, trace: Trace) -> Message:
        async with self._pool.acquire() as conn:
            total, enabled = await store.task_counts(conn, trace.tenant)
        return TaskCount(total=total, enabled=enabled)

    async def _list(self, query: ListTasks, trace: Trace) -> Message:
        limit = max(1, min(query.limit, 200))
        async with self._pool.acquire() as conn:
            tasks = await store.list_tasks(
                conn, trace.tenant, task_type=query.task_type.value if query.task_type else None,
                enabled=query.enabled, limit=limit, after=query.after,
            )  # fmt: skip
        return TaskList(tasks=tasks, next_after=tasks[-1].id if len(tasks) == limit else None)

    async def _update(self, cmd: UpdateTask, trace: Trace) -> Message:
        await check_notification_config(cmd.notification_config, self.config.allow)
        async with self._pool.acquire() as conn, conn.transaction():
            row = await self._found(conn, cmd.task_id, trace.tenant, lock=True)
            changes = {f: getattr(cmd, f) for f in UPDATABLE_FIELDS if getattr(cmd, f) is not None}
            timing_changed = bool(changes.keys() & {"schedule_expression", "interval_seconds", "run_at", "timezone"})
            if timing_changed:  # a new timing replaces the old one whole
                for field in ("schedule_expression", "interval_seconds", "run_at"):
                    changes.setdefault(field, None)
            updated = replace_task(row.task, updated_at=self.clock.now(), **changes)
            if timing_changed:
                updated = self._validated(updated)
            check_channels(updated.notification_config)
            task = updated
            row = await store.save_task(conn, task)
        await self._changed(row.task, trace)
        return TaskView(task=row.task)

    async def _delete(self, cmd: DeleteTask, trace: Trace) -> Message:
        async with self._pool.acquire() as conn:
            row = await store.delete_task(conn, cmd.task_id, trace.tenant)
        if row is None:
            raise BusError(ErrorCode.NOT_FOUND, f"no task {cmd.task_id}")
        await self._changed(row.task, trace, deleted=True)
        if row.task.task_type is TaskType.TRIGGERED:
            await self._unregister_trigger(row.task, trace)
        return TaskView(task=row.task)

    async def _set_enabled(self, cmd: SetTaskEnabled, trace: Trace) -> Message:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await self._found(conn, cmd.task_id, trace.tenant, lock=True)
            task = row.task
            nxt = task.next_run_at
            now = self.clock.now()
            paused_over_slot = nxt is not None and nxt < now and cmd.enabled and not task.enabled
            if paused_over_slot and task.misfire_policy is MisfirePolicy.SKIP:  # resume at the next slot
                nxt = _timing(task).next_after(now)
            if cmd.enabled and not task.enabled:
                await self._check_counts(conn, replace_task(task, enabled=True, next_run_at=nxt), new=False)
            row = await store.save_task(conn, replace_task(task, enabled=cmd.enabled, next_run_at=nxt, updated_at=now))
        await self._changed(row.task, trace)
        return TaskView(task=row.task)

    async def _list_runs(self, query: ListTaskRuns, trace: Trace) -> Message:
        limit = max(1, min(query.limit, 200))
        async with self._pool.acquire() as conn:
            await self._found(conn, query.task_id, trace.tenant)
            runs = await store.list_runs(conn, query.task_id, limit=limit, after=query.after)
        return TaskRunList(runs=runs, next_after=runs[-1].id if len(runs) == limit else None)

    async def _get_run(self, query: GetTaskRun, trace: Trace) -> Message:
        async with self._pool.acquire() as conn:
            run = await store.get_run(conn, query.task_run_id, trace.tenant)
        if run is None:
            raise BusError(ErrorCode.NOT_FOUND, f"no task run {query.task_run_id}")
        return TaskRunView(run=run)


def replace_task(task: Task, **changes: Any) -> Task:
    return msgspec.structs.replace(task, **changes)


def _is_token(value: str) -> bool:
    try:
        subjects.token(value)
    except subjects.InvalidToken:
        return False
    return True
