"""The research actor: research jobs (plan, fan out, gather, synthesize), and the sources they read —
documents a tenant ingests (PostgreSQL full-text search) and web pages fetched on request.

A job is driven by the consumer that took its StartResearch command, which holds (and heartbeats) the
message until the job ends; a crash leaves it unacked, so another replica (or the restarted one)
takes it over. Every sub-run is an executor run with a deterministic id, recorded here when it
starts and when it ends, so a resumed job waits for the runs in flight and re-runs none that
finished (docs/protocol.md, "Research jobs").
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from actors._notifications import check_notification_config, deliveries, new_signing_secret
from actors._postgres import health as postgres_health
from actors._postgres import open_pool
from actors.research import report
from actors.research.config import ResearchConfig
from actors.research.fetch import FetchError, fetch_text
from actors.research.store import FINISHED, JobRow, JobStore, totals_of
from actors.research.text import UnsupportedType, to_text
from bus import subjects
from bus.actor import Actor, Consumer, Delivery, Endpoint, being_cancelled
from bus.codec import decode
from bus.config import BusConfig
from bus.errors import BusError, Reject
from bus.headers import Trace
from bus.streams import EXECUTOR_EVT, RESEARCH_CMD, ConsumerSpec
from schemas._base import Message
from schemas.errors import ErrorCode
from schemas.research import (
    CancelResearch,
    Citation,
    Document,
    DocumentHit,
    DocumentHits,
    DocumentList,
    DocumentView,
    FetchedPage,
    FetchPage,
    GetDocument,
    GetResearch,
    IngestDocument,
    ListDocuments,
    PhaseChanged,
    ResearchCommand,
    ResearchFinished,
    ResearchStatus,
    ResearchView,
    SearchDocuments,
    StartResearch,
    StopReason,
    SubQuestion,
    Subrun,
    SubrunFinished,
    SubrunKind,
    SubrunStarted,
    Totals,
)
from schemas.runs import CancelRun, GetRun, RunCompleted, RunFailed, RunFinished, RunRequest, RunView

__all__ = ["ResearchActor"]

MIGRATIONS = Path(__file__).parent / "migrations"
PLANNER = "research-planner"
WRITER = "research-writer"


class LimitReached(Exception):
    """A budget is spent: `in_run` when a running sub-run hit it (stop now), else before one started
    (the sub-runs already running may finish: they started within the budget)."""

    def __init__(self, limit: StopReason, *, in_run: bool = False) -> None:
        super().__init__(limit.value)
        self.limit = limit
        self.in_run = in_run


class JobFailed(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Outcome:
    status: ResearchStatus
    report: str
    citations: list[Citation]
    stopped_by: StopReason | None = None
    error: str | None = None


def _document(row: Any) -> Document:
    return Document(
        id=row["id"],
        tenant=row["tenant"],
        title=row["title"],
        content_type=row["content_type"],
        content=row["content"],
        created_at=row["created_at"],
    )


class ResearchActor(Actor):
    name = subjects.ActorName.RESEARCH
    description = "research jobs, and their sources: ingested documents and fetched pages"

    def __init__(self, bus_config: BusConfig, config: ResearchConfig) -> None:
        super().__init__(bus_config)
        self.config = config
        self._pool: Any = None
        self._store: JobStore | None = None
        self._jobs: dict[str, tuple[str, asyncio.Future[Any]]] = {}  # job id -> (tenant, the job's work)
        self._cancel_sub: Subscription | None = None
        self._starting: dict[str, asyncio.Lock] = {}  # job id -> held while a sub-run is checked and started

    @property
    def store(self) -> JobStore:
        if self._store is None:
            raise RuntimeError("research actor is not started")
        return self._store

    def routes(self) -> Sequence[Consumer[Any] | Endpoint[Any]]:
        return (
            Consumer(
                ConsumerSpec(RESEARCH_CMD, "research-cmd", subjects.research_commands()),
                ResearchCommand,
                self._on_command,
                concurrency=self.config.max_jobs,
            ),
            Endpoint("start", StartResearch, self._start),
            Endpoint("get_research", GetResearch, self._get_research),
            Endpoint("cancel_research", CancelResearch, self._cancel_research),
            Endpoint("ingest", IngestDocument, self._ingest),
            Endpoint("get_document", GetDocument, self._get),
            Endpoint("list_documents", ListDocuments, self._list),
            Endpoint("search", SearchDocuments, self._search),
            Endpoint("fetch", FetchPage, self._fetch),
        )

    async def on_start(self) -> None:
        self._pool = await open_pool(self.config.database_url, schema="research", migrations=MIGRATIONS)
        self._store = JobStore(self._pool)
        self._cancel_sub = await self.bus.nc.subscribe(subjects.research_cancels(), cb=self._on_cancel_signal)

    async def on_stop(self) -> None:
        if self._cancel_sub is not None:
            await self._cancel_sub.unsubscribe()
        if self._pool is not None:
            await self._pool.close()

    async def health_checks(self) -> dict[str, str]:
        return await postgres_health(self._pool)

    # --- starting, reading and cancelling jobs -----------------------------------------------

    async def _start(self, cmd: StartResearch, trace: Trace) -> Message:
        """Record the job and queue it; answers with the job (and, the first time, its webhook secret)."""
        _check_limits(cmd)
        await check_notification_config(cmd.notification_config, self.config.allow)
        row, created = await self._create(cmd, trace.tenant)
        if not row.finished:
            await self.bus.publish(
                subjects.research_command(trace.tenant, cmd.job_id), cmd, trace=trace, msg_id=cmd.job_id
            )
        view = row.view(await self.store.subruns(row.id))
        return ResearchView(job=view, notification_secret=row.notification_secret if created else None)

    async def _create(self, cmd: StartResearch, tenant: str) -> tuple[JobRow, bool]:
        found = await self.store.create(tenant, cmd, new_signing_secret())
        if found is None:
            raise BusError(ErrorCode.CONFLICT, f"research job id {cmd.job_id} is taken")
        return found

    async def _get_research(self, query: GetResearch, trace: Trace) -> Message:
        row = await self.store.get(query.job_id, trace.tenant)
        if row is None:
            raise BusError(ErrorCode.NOT_FOUND, f"no research job {query.job_id}")
        return ResearchView(job=row.view(await self.store.subruns(row.id)))

    async def _cancel_research(self, cmd: CancelResearch, trace: Trace) -> Message:
        row = await self._request_cancel(cmd, trace)
        return ResearchView(job=row.view(await self.store.subruns(row.id)))

    async def _request_cancel(self, cmd: CancelResearch, trace: Trace) -> JobRow:
        """A flag in the row (a job not running anywhere sees it when it is next taken up) plus a
        broadcast reaching the replica driving it, which stops the job and cancels its sub-runs."""
        row = await self.store.request_cancel(cmd.job_id, trace.tenant, cmd.reason)
        if row is None:
            raise BusError(ErrorCode.NOT_FOUND, f"no research job {cmd.job_id}")
        if not row.finished:
            await self.bus.broadcast(subjects.research_cancel(trace.tenant, cmd.job_id), cmd, trace=trace)
        return row

    async def _on_cancel_signal(self, msg: Msg) -> None:
        try:
            cmd = decode(msg.data, CancelResearch)
        except (msgspec.ValidationError, msgspec.DecodeError):
            self._log.warning("undecodable cancel signal", subject=msg.subject)
            return
        running = self._jobs.get(cmd.job_id)
        if running is not None and running[0] == msg.subject.split(".")[-2]:
            running[1].cancel()

    async def _on_command(self, cmd: StartResearch | CancelResearch, delivery: Delivery) -> None:
        match cmd:
            case StartResearch():
                try:
                    _check_limits(cmd)
                    row, _ = await self._create(cmd, delivery.tenant)
                except BusError as e:
                    raise Reject(e.message) from e
                await self._drive(row, delivery)
            case CancelResearch():
                try:
                    await self._request_cancel(cmd, delivery.trace)
                except BusError as e:
                    raise Reject(e.message) from e

    # --- driving a job ----------------------------------------------------------------------

    async def _drive(self, row: JobRow, delivery: Delivery) -> None:
        """Run the job to its end (or resume it), then record and announce the end."""
        trace = delivery.trace.child(run_id=row.id)
        if row.finished:  # a redelivery after the end was recorded: announce it again (idempotent)
            await self._announce(row, trace)
            return
        work = asyncio.ensure_future(self._work(row.id, trace))
        self._jobs[row.id] = (row.tenant, work)  # from here a cancel signal reaches it
        try:
            text, cited = await work
            outcome = Outcome(ResearchStatus.COMPLETED, text, cited)
        except LimitReached as e:
            outcome = await self._ended_early(row, status=ResearchStatus.COMPLETED, stopped_by=e.limit)
        except JobFailed as e:
            outcome = await self._ended_early(row, status=ResearchStatus.FAILED, error=str(e))
        except asyncio.CancelledError:
            if not work.cancelled() or being_cancelled():
                raise  # the actor is stopping: the message goes back, and the job resumes elsewhere
            current = await self.store.get(row.id, row.tenant)
            reason = (current.cancel_reason if current else None) or "cancelled by request"
            outcome = await self._ended_early(row, status=ResearchStatus.CANCELLED, error=reason)
        except Exception as e:
            if delivery.num_delivered < self.bus_config.max_deliver:
                raise  # PostgreSQL or NATS hiccup: the message is redelivered and the job resumes
            outcome = await self._ended_early(row, status=ResearchStatus.FAILED, error=f"{type(e).__name__}: {e}")
        finally:
            self._jobs.pop(row.id, None)
            self._starting.pop(row.id, None)
            if not work.done():
                work.cancel()
        done = await self.store.finish(
            row.id,
            outcome.status,
            report=outcome.report,
            citations=outcome.citations,
            stopped_by=outcome.stopped_by,
            error=outcome.error,
        )
        await self._announce(done, trace)

    async def _ended_early(
        self, row: JobRow, *, status: ResearchStatus, stopped_by: StopReason | None = None, error: str | None = None
    ) -> Outcome:
        """The job ends early: cancel the sub-runs still running, and report what was found."""
        for run_id in await self.store.cancel_unfinished(row.id):
            try:
                await self.bus.request(
                    subjects.service(subjects.ActorName.EXECUTOR, "cancel"),
                    CancelRun(run_id=run_id, reason=f"its research job {row.id} ended"),
                    RunView,
                    trace=Trace(tenant=row.tenant, run_id=run_id),
                )
            except BusError as e:
                self._log.warning("cannot cancel sub-run", run_id=run_id, error=e.message)
        subruns = await self.store.subruns(row.id)
        text = report.partial_report(row.spec.question, subruns, stopped_by=stopped_by, reason=error or "")
        cited = report.citations(text, subruns)
        error = error if status is not ResearchStatus.COMPLETED else None
        return Outcome(status, report.with_sources(text, cited), cited, stopped_by, error)

    async def _work(self, job_id: str, trace: Trace) -> tuple[str, list[Citation]]:
        """Plan, research round by round, write: each step skipped where its sub-run already finished."""
        row = await self.store.begin(job_id)
        if row.cancel_reason is not None:  # cancelled before it ran, or while no replica drove it
            raise asyncio.CancelledError
        spec = row.spec
        started = (row.started_at or datetime.now(UTC)).timestamp()
        left = started + spec.deadline_seconds - datetime.now(UTC).timestamp()
        try:
            async with asyncio.timeout(max(left, 0.0)):
                await self._phase(row, ResearchStatus.PLANNING, 0, trace)
                subruns = {s.run_id: s for s in await self.store.subruns(job_id)}
                plan = await self._subrun(
                    row, trace, f"{job_id}-plan", SubrunKind.PLAN, 0, PLANNER,
                    report.plan_prompt(spec.question, spec.max_subtasks), subruns.get(f"{job_id}-plan"),
                )  # fmt: skip
                questions = report.questions_of(plan.output, spec.max_subtasks)
                if not questions:
                    questions = [SubQuestion(question=spec.question, why="the plan gave no sub-questions")]
                await self.store.add_questions(job_id, 1, questions)
                for depth in range(1, spec.max_depth + 1):
                    if not await self._round(row, trace, depth) or depth == spec.max_depth:
                        break
                await self._phase(row, ResearchStatus.SYNTHESIZING, 0, trace)
                subruns = {s.run_id: s for s in await self.store.subruns(job_id)}
                written = await self._subrun(
                    row, trace, f"{job_id}-report", SubrunKind.REPORT, 0, WRITER,
                    report.writer_prompt(spec.question, _answered(list(subruns.values()))),
                    subruns.get(f"{job_id}-report"),
                )  # fmt: skip
        except TimeoutError:
            raise LimitReached(StopReason.DEADLINE) from None
        if written.status != "completed" or not written.output:
            raise JobFailed(f"the report could not be written: {written.error or written.status}")
        cited = report.citations(written.output, await self.store.subruns(job_id))
        return report.with_sources(written.output, cited), cited

    async def _round(self, row: JobRow, trace: Trace, depth: int) -> bool:
        """Answer this depth's sub-questions, then ask the planner for follow-ups; whether there are any."""
        spec = row.spec
        await self._phase(row, ResearchStatus.RESEARCHING, depth, trace)
        subruns = await self.store.subruns(row.id)
        slots = asyncio.Semaphore(self.config.concurrency)

        spent: list[LimitReached] = []

        async def answer(s: Subrun) -> None:
            async with slots:
                if spent:
                    return
                try:
                    question = s.question or ""
                    await self._subrun(row, trace, s.run_id, SubrunKind.QUESTION, depth, spec.agent, question, s)
                except LimitReached as e:
                    if e.in_run:
                        raise
                    spent.append(e)

        await _all(answer(s) for s in subruns if s.kind is SubrunKind.QUESTION and s.depth == depth)
        if spent:
            raise spent[0]
        if depth == spec.max_depth:
            return False
        subruns = await self.store.subruns(row.id)
        room = spec.max_subtasks - sum(1 for s in subruns if s.kind is SubrunKind.QUESTION)
        if room <= 0:
            return False
        run_id = f"{row.id}-follow-up{depth}"
        follow_up = await self._subrun(
            row, trace, run_id, SubrunKind.FOLLOW_UP, depth, PLANNER,
            report.follow_up_prompt(spec.question, _answered(subruns), room),
            next((s for s in subruns if s.run_id == run_id), None),
        )  # fmt: skip
        questions = report.questions_of(follow_up.output, room)
        await self.store.add_questions(row.id, depth + 1, questions)
        return bool(questions)

    async def _subrun(
        self,
        row: JobRow,
        trace: Trace,
        run_id: str,
        kind: SubrunKind,
        depth: int,
        agent: str,
        prompt: str,
        known: Subrun | None,
    ) -> Subrun:
        """One executor run of the job, recorded before it starts and when it ends. `known`: its row as
        the caller read it (None: none yet). A finished one is returned as recorded; one in flight when
        the job resumes is waited for (see `_run`)."""
        if known is not None and known.status in FINISHED:
            return known
        budget = row.spec.budget
        limited = any(v is not None for v in (budget.max_subruns, budget.max_tokens, budget.max_cost_usd))
        totals = Totals()
        if known is None or known.status == "pending":
            question = known.question if known else None
            if limited:  # one start at a time, so each budget check sees every start before it
                async with self._starting.setdefault(row.id, asyncio.Lock()):
                    subruns = await self.store.subruns(row.id)
                    _check_budget(row, subruns)
                    totals = totals_of(subruns)
                    await self.store.start_subrun(row.id, run_id, kind, depth, question)
            else:
                await self.store.start_subrun(row.id, run_id, kind, depth, question)
            started = SubrunStarted(job_id=row.id, run_id=run_id, kind=kind, depth=depth, question=question)
            await self._event(row, "subrun_started", started, trace, msg_id=f"{run_id}:started")
        elif limited:
            totals = totals_of(await self.store.subruns(row.id))
        used = totals.input_tokens + totals.output_tokens
        request = RunRequest(
            run_id=run_id,
            agent=agent,
            prompt=prompt,
            parent_run_id=row.id,
            max_tokens=budget.max_tokens - used if budget.max_tokens is not None else None,
            max_cost_usd=(budget.max_cost_usd - (totals.cost_usd or 0.0) if budget.max_cost_usd is not None else None),
            sources=row.spec.sources if kind is SubrunKind.QUESTION else [],
        )
        resumed = known is not None and known.status == "running"
        result = await self._run(row.tenant, request, trace, resumed=resumed)
        match result:
            case RunCompleted():
                sources = report.sources_of(bytes(result.new_messages)) if kind is SubrunKind.QUESTION else []
                await self.store.finish_subrun(
                    run_id, "completed", output=result.output, sources=sources, usage=result.usage
                )
            case RunFailed():
                await self.store.finish_subrun(run_id, "failed", error=result.error.message)
            case _:
                await self.store.finish_subrun(run_id, "cancelled", error=result.reason)
        subruns = await self.store.subruns(row.id)
        done = next(s for s in subruns if s.run_id == run_id)
        finished = SubrunFinished(
            job_id=row.id, run_id=run_id, kind=kind, status=done.status, usage=done.usage, totals=totals_of(subruns)
        )
        await self._event(row, "subrun_finished", finished, trace, msg_id=f"{run_id}:finished")
        if isinstance(result, RunFailed) and result.error.code is ErrorCode.LIMIT_EXCEEDED:
            limit = result.error.details.get("limit", StopReason.MAX_TOKENS.value)
            raise LimitReached(StopReason(limit), in_run=True)
        return done

    async def _run(
        self, tenant: str, request: RunRequest, trace: Trace, *, resumed: bool
    ) -> RunCompleted | RunFailed | Any:
        """Publish the run request and wait for the executor's RunFinished. A resumed job publishes only
        if the executor has no record of the run: one it has is running (its request stays queued until
        it ends, so an executor crash restarts it) or has ended (its RunFinished is in the stream)."""
        subject = subjects.executor_finished(tenant, request.run_id)
        finished = aiter(self.bus.replay(EXECUTOR_EVT.name, subject, RunFinished))
        try:
            if not resumed or not await self._executor_knows(tenant, request.run_id):
                await self.bus.publish(
                    subjects.executor_command(tenant, request.run_id),
                    request,
                    trace=trace.child(run_id=request.run_id),
                    msg_id=request.run_id,  # a copy inside the 2-minute window is dropped
                )
            return (await anext(finished)).body.result
        finally:
            await finished.aclose()  # type: ignore[attr-defined]

    async def _executor_knows(self, tenant: str, run_id: str) -> bool:
        try:
            await self.bus.request(
                subjects.service(subjects.ActorName.EXECUTOR, "get_run"),
                GetRun(run_id=run_id),
                RunView,
                trace=Trace(tenant=tenant, run_id=run_id),
            )
        except BusError as e:
            if e.code is ErrorCode.NOT_FOUND:
                return False
            raise
        return True

    async def _phase(self, row: JobRow, status: ResearchStatus, depth: int, trace: Trace) -> None:
        await self.store.set_status(row.id, status)
        changed = PhaseChanged(job_id=row.id, status=status, depth=depth)
        await self._event(row, "phase", changed, trace, msg_id=f"{row.id}:phase:{status.value}:{depth}")

    async def _event(self, row: JobRow, kind: str, event: Message, trace: Trace, *, msg_id: str) -> None:
        await self.bus.publish(subjects.research_event(row.tenant, row.id, kind), event, trace=trace, msg_id=msg_id)

    async def _announce(self, row: JobRow, trace: Trace) -> None:
        """The job's end as an event, and through the notifier (both idempotent: safe to repeat)."""
        totals = totals_of(await self.store.subruns(row.id))
        ended = ResearchFinished(
            job_id=row.id, status=row.status, stopped_by=row.stopped_by, error=row.error, totals=totals
        )
        await self._event(row, "finished", ended, trace, msg_id=f"{row.id}:finished")
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
        for subject, deliver in deliveries(
            row.spec.notification_config,
            tenant=row.tenant,
            run_id=row.id,
            task_id=None,
            title=f"Research {row.status.value}: {_short(row.spec.question)}",
            body=row.report or row.error or "",
            payload=payload,
            signing_secret=row.notification_secret,
        ):
            await self.bus.publish(subject, deliver, trace=trace, msg_id=deliver.delivery_id)

    # --- sources ------------------------------------------------------------------------------

    async def _fetch(self, query: FetchPage, trace: Trace) -> Message:
        try:
            page = await fetch_text(
                query.url,
                allow=self.config.allow,
                max_bytes=self.config.fetch_max_bytes,
                timeout_s=self.config.fetch_timeout_s,
            )
        except FetchError as e:
            raise BusError(ErrorCode.INVALID, str(e)) from e
        return FetchedPage(
            url=page.url, title=page.title, content_type=page.content_type, text=page.text, truncated=page.truncated
        )

    async def _ingest(self, cmd: IngestDocument, trace: Trace) -> Message:
        try:
            text = to_text(cmd.content, cmd.content_type)
        except UnsupportedType as e:
            raise BusError(ErrorCode.INVALID, str(e)) from e
        if not text.strip():
            raise BusError(ErrorCode.INVALID, "the document has no text")
        if len(text) > self.config.max_document_chars:
            raise BusError(ErrorCode.TOO_LARGE, f"documents are limited to {self.config.max_document_chars} characters")
        kind = "text/html" if cmd.content_type.startswith("text/html") else cmd.content_type.split(";")[0].strip()
        row = await self._pool.fetchrow(
            """
            INSERT INTO documents (id, tenant, title, content_type, content) VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id RETURNING *
            """,
            cmd.document_id, trace.tenant, cmd.title, kind, text,
        )  # fmt: skip
        if row["tenant"] != trace.tenant:
            raise BusError(ErrorCode.CONFLICT, f"document id {cmd.document_id} is taken")
        return DocumentView(document=_document(row))

    async def _get(self, query: GetDocument, trace: Trace) -> Message:
        row = await self._pool.fetchrow(
            "SELECT * FROM documents WHERE id = $1 AND tenant = $2", query.document_id, trace.tenant
        )
        if row is None:
            raise BusError(ErrorCode.NOT_FOUND, f"no document {query.document_id}")
        return DocumentView(document=_document(row))

    async def _list(self, query: ListDocuments, trace: Trace) -> Message:
        limit = max(1, min(query.limit, 200))
        rows = await self._pool.fetch(
            "SELECT * FROM documents WHERE tenant = $1 AND ($2::text IS NULL OR id > $2) ORDER BY id LIMIT $3",
            trace.tenant, query.after, limit,
        )  # fmt: skip
        documents = [_document(r) for r in rows]
        return DocumentList(documents=documents, next_after=documents[-1].id if len(documents) == limit else None)

    async def _search(self, query: SearchDocuments, trace: Trace) -> Message:
        rows = await self._pool.fetch(
            """
            SELECT d.id, d.title, ts_rank(d.tsv, q) AS rank,
                   ts_headline('english', d.content, q, 'MaxFragments=2, StartSel=«, StopSel=»') AS snippet
            FROM documents d, websearch_to_tsquery('english', $2) q
            WHERE d.tenant = $1 AND d.tsv @@ q
            ORDER BY rank DESC, d.id LIMIT $3
            """,
            trace.tenant, query.query, max(1, min(query.limit, 50)),
        )  # fmt: skip
        hits = [
            DocumentHit(document_id=r["id"], title=r["title"], rank=float(r["rank"]), snippet=r["snippet"])
            for r in rows
        ]
        return DocumentHits(hits=hits)


def _check_limits(cmd: StartResearch) -> None:
    """What the gateway checks too, for commands published straight to the bus."""
    problems = []
    if not cmd.question.strip():
        problems.append("question must not be empty")
    if not 1 <= cmd.max_subtasks <= 50:
        problems.append("max_subtasks must be 1-50")
    if not 1 <= cmd.max_depth <= 5:
        problems.append("max_depth must be 1-5")
    if not 0 < cmd.deadline_seconds <= 86_400:
        problems.append("deadline_seconds must be in (0, 86400]")
    if unknown := set(cmd.sources) - {"documents", "web"}:
        problems.append(f"unknown sources {sorted(unknown)}: use documents and/or web")
    b = cmd.budget
    if any(v is not None and v <= 0 for v in (b.max_subruns, b.max_tokens, b.max_cost_usd)):
        problems.append("budget limits must be positive")
    if problems:
        raise BusError(ErrorCode.INVALID, "; ".join(problems))


def _check_budget(row: JobRow, subruns: list[Subrun]) -> None:
    """Before a sub-run starts: LimitReached if the job has used any of its budget up."""
    budget = row.spec.budget
    totals = totals_of(subruns)
    if budget.max_subruns is not None and totals.subruns >= budget.max_subruns:
        raise LimitReached(StopReason.MAX_SUBRUNS)
    if budget.max_tokens is not None and totals.input_tokens + totals.output_tokens >= budget.max_tokens:
        raise LimitReached(StopReason.MAX_TOKENS)
    if budget.max_cost_usd is not None and (totals.cost_usd is None or totals.cost_usd >= budget.max_cost_usd):
        raise LimitReached(StopReason.MAX_COST)  # spent, or no longer measurable: it cannot be kept


def _answered(subruns: list[Subrun]) -> list[Subrun]:
    return [s for s in subruns if s.kind is SubrunKind.QUESTION and s.status == "completed"]


def _short(text: str, limit: int = 80) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


async def _all(work: Iterable[Awaitable[None]]) -> None:
    """Run all at once; the first failure cancels the rest (and is raised as it is, not in a group)."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
