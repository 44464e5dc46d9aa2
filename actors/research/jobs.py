"""Research jobs: starting, reading and cancelling one, driving it to its end, and announcing that end.

A job is driven by the consumer that took its StartResearch command, which holds (and heartbeats) the
message until the job ends; a crash leaves it unacked, so another replica (or the restarted one)
takes it over and resumes it (see `subruns.py`). A command dead-lettered after failing ends its job
`failed`, announced (docs/protocol.md, "Research jobs").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import structlog

from actors._notifications import approvals_notice, check_notification_config, deliveries, new_signing_secret
from actors._pages import fitting
from actors.research import report
from actors.research.budget import JobFailed, LimitReached, check_limits
from actors.research.config import ResearchConfig
from actors.research.store import JobRow, JobStore, totals_of
from actors.research.subruns import JobWork, publish_job_event
from bus import subjects
from bus.actor import Delivery, being_cancelled
from bus.client import Bus
from bus.errors import BusError
from bus.headers import Trace
from bus.runs import CancelSignals
from schemas._base import Message
from schemas.approvals import RunWaiting
from schemas.errors import ErrorCode
from schemas.pages import Keyset
from schemas.research import (
    CancelResearch,
    Citation,
    GetResearch,
    ListResearch,
    ResearchFinished,
    ResearchList,
    ResearchStatus,
    ResearchView,
    StartResearch,
    StopReason,
)
from schemas.tenants import Quotas

__all__ = ["Jobs"]

log = structlog.get_logger("research")
LIST_MAX = 200  # jobs in one page of the list


@dataclass(frozen=True, slots=True)
class JobEnd:
    """How a job ended: what `JobStore.finish` records."""

    status: ResearchStatus
    report: str
    citations: list[Citation]
    stopped_by: StopReason | None = None
    error: str | None = None


class Jobs:
    """The job endpoints' and command's handlers."""

    def __init__(
        self,
        bus: Bus,
        store: JobStore,
        config: ResearchConfig,
        cancels: CancelSignals[CancelResearch],
        quotas: Callable[[str], Quotas],
    ) -> None:
        self.bus = bus
        self.quotas = quotas  # a tenant's quotas, as its settings say now
        self.store = store
        self.config = config
        self.cancels = cancels
        self.work = JobWork(bus, store, concurrency=config.concurrency)

    # --- starting, reading and cancelling ----------------------------------------------------

    async def start(self, cmd: StartResearch, trace: Trace) -> Message:
        """Record the job and queue it; answers with the job (and, the first time, its webhook secret)."""
        check_limits(cmd)
        await check_notification_config(cmd.notification_config, self.config.allow)
        row, created = await self.create(cmd, trace.tenant)
        if not row.finished:
            await self.bus.publish(
                subjects.research_command(trace.tenant, cmd.job_id), cmd, trace=trace, msg_id=cmd.job_id
            )
        view = row.view(await self.store.subruns(row.id))
        secret = self.config.secrets.open(row.notification_secret) if created else None
        return ResearchView(job=view, notification_secret=secret)

    async def create(self, cmd: StartResearch, tenant: str) -> tuple[JobRow, bool]:
        limit = self.quotas(tenant).research_jobs or 0
        found = await self.store.create(
            tenant, cmd, self.config.secrets.seal(new_signing_secret()), max_unfinished=limit
        )
        if found is None:
            raise BusError(ErrorCode.CONFLICT, f"research job id {cmd.job_id} is taken")
        return found

    async def get(self, query: GetResearch, trace: Trace) -> Message:
        row = await self.store.get(query.job_id, trace.tenant)
        if row is None:
            raise BusError(ErrorCode.NOT_FOUND, f"no research job {query.job_id}")
        return ResearchView(job=row.view(await self.store.subruns(row.id)))

    async def list_jobs(self, query: ListResearch, trace: Trace) -> Message:
        """A page of the tenant's jobs, each as `get` shows it; fewer than asked once they hold PAGE_BYTES."""
        limit = max(1, min(query.limit, LIST_MAX))
        rows = await self.store.page(trace.tenant, limit=limit + 1, after=query.after, status=query.status)
        subruns = await self.store.subruns_of([r.id for r in rows[:limit]])
        jobs = [row.view(subruns[row.id]) for row in rows[:limit]]
        jobs = jobs[: fitting(jobs)]
        more = len(jobs) < len(rows)
        next_after = Keyset(at=jobs[-1].created_at, id=jobs[-1].id) if more and jobs else None
        return ResearchList(jobs=jobs, next_after=next_after)

    async def cancel(self, cmd: CancelResearch, trace: Trace) -> Message:
        row = await self.request_cancel(cmd, trace)
        return ResearchView(job=row.view(await self.store.subruns(row.id)))

    async def request_cancel(self, cmd: CancelResearch, trace: Trace) -> JobRow:
        """A flag in the row (a job not running anywhere sees it when it is next taken up) plus a
        broadcast reaching the replica driving it, which stops the job and cancels its sub-runs."""
        row = await self.store.request_cancel(cmd.job_id, trace.tenant, cmd.reason)
        if row is None:
            raise BusError(ErrorCode.NOT_FOUND, f"no research job {cmd.job_id}")
        if not row.finished:
            await self.bus.broadcast(subjects.research_cancel(trace.tenant, cmd.job_id), cmd, trace=trace)
        return row

    # --- driving -----------------------------------------------------------------------------

    async def drive(self, row: JobRow, delivery: Delivery) -> None:
        """Run the job to its end (or resume it), then record and announce the end. A failure other
        than the job's own propagates: the command is redelivered (and the job resumes) or, at last,
        dead-lettered, which ends the job failed (`dead_lettered`)."""
        trace = delivery.trace.child(run_id=row.id)
        if row.finished:  # a redelivery after the end was recorded: announce it again (idempotent)
            await self.announce(row, trace)
            return
        work = asyncio.ensure_future(self.work.work(row.id, trace))
        try:
            with self.cancels.watching(row.tenant, row.id, lambda _: work.cancel()):
                end = await self._end_of(row, work)
        finally:
            if not work.done():
                work.cancel()
        await self._record(row, end, trace)

    async def _end_of(self, row: JobRow, work: asyncio.Future[tuple[str, list[Citation]]]) -> JobEnd:
        try:
            text, cited = await work
            return JobEnd(ResearchStatus.COMPLETED, text, cited)
        except LimitReached as e:
            return await self._ended_early(row, status=ResearchStatus.COMPLETED, stopped_by=e.limit)
        except JobFailed as e:
            return await self._ended_early(row, status=ResearchStatus.FAILED, error=str(e))
        except asyncio.CancelledError:
            if not work.cancelled() or being_cancelled():
                raise  # the actor is stopping: the message goes back, and the job resumes elsewhere
            current = await self.store.get(row.id, row.tenant)
            reason = (current.cancel_reason if current else None) or "cancelled by request"
            return await self._ended_early(row, status=ResearchStatus.CANCELLED, error=reason)

    async def dead_lettered(self, cmd: StartResearch, delivery: Delivery, reason: str) -> None:
        """The job's command was given up on: the job (if it is this tenant's and still going) ends failed."""
        row = await self.store.get(cmd.job_id, delivery.tenant)
        if row is None or row.finished:
            return
        end = await self._ended_early(row, status=ResearchStatus.FAILED, error=f"gave up: {reason}")
        await self._record(row, end, delivery.trace.child(run_id=row.id))

    async def _record(self, row: JobRow, end: JobEnd, trace: Trace) -> None:
        done = await self.store.finish(
            row.id, end.status, report=end.report, citations=end.citations, stopped_by=end.stopped_by, error=end.error
        )
        await self.announce(done, trace)

    async def _ended_early(
        self, row: JobRow, *, status: ResearchStatus, stopped_by: StopReason | None = None, error: str | None = None
    ) -> JobEnd:
        """The job ends early: cancel the sub-runs still running, and report what was found."""
        for run_id in await self.store.cancel_unfinished(row.id):
            try:
                await self.work.runs.cancel(
                    run_id, Trace(tenant=row.tenant, run_id=run_id), reason=f"its research job {row.id} ended"
                )
            except BusError as e:
                log.warning("cannot cancel sub-run", run_id=run_id, error=e.message)
        subruns = await self.store.subruns(row.id)
        text = report.partial_report(row.spec.question, subruns, stopped_by=stopped_by, reason=error or "")
        cited = report.citations(text, subruns)
        error = error if status is not ResearchStatus.COMPLETED else None
        return JobEnd(status, report.with_sources(text, cited), cited, stopped_by, error)

    async def announce(self, row: JobRow, trace: Trace) -> None:
        """The job's end as an event, and through the notifier (both idempotent: safe to repeat)."""
        totals = totals_of(await self.store.subruns(row.id))
        ended = ResearchFinished(
            job_id=row.id, status=row.status, stopped_by=row.stopped_by, error=row.error, totals=totals
        )
        await publish_job_event(self.bus, row, "finished", ended, trace, msg_id=f"{row.id}:finished")
        payload: dict[str, object] = msgspec.to_builtins(
            {
                "job_id": row.id,
                "question": row.spec.question,
                "status": row.status,
                "stopped_by": row.stopped_by,
                "error": row.error,
                "report": row.report,
                "citations": row.citations,
                "totals": totals,
            }
        )
        title = f"Research {row.status.value}: {_short(row.spec.question)}"
        await self._send(row, title, row.report or row.error or "", payload, trace)

    async def _send(
        self, row: JobRow, title: str, body: str, payload: dict[str, object], trace: Trace, *, about: str | None = None
    ) -> None:
        """One notice about the job through each of its channels (none if it names none)."""
        for subject, deliver in deliveries(
            row.spec.notification_config,
            tenant=row.tenant,
            run_id=row.id,
            task_id=None,
            title=title,
            body=body,
            payload=payload,
            signing_secret=row.notification_secret,
            secrets=self.config.secrets,
            about=about,
        ):
            await self.bus.publish(subject, deliver, trace=trace, msg_id=deliver.delivery_id)

    async def notify_waiting(self, waiting: RunWaiting, tenant: str, trace: Trace) -> None:
        """A sub-run of a job parked on approvals: the job's channels are told, with how to decide each."""
        if waiting.parent_run_id is None or not waiting.approvals:
            return
        row = await self.store.get(waiting.parent_run_id, tenant)
        if row is None or row.spec.notification_config is None:
            return
        title, body, payload = approvals_notice(waiting.approvals, what=f"research job {row.id}")
        payload["job_id"] = row.id
        about = f"approval-{waiting.run_id}-{waiting.approvals[0].park}"
        await self._send(row, title, body, payload, trace, about=about)


def _short(text: str, limit: int = 80) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
