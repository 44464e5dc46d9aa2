"""One research job's work: plan, research round by round, write — every step an executor sub-run.

Each sub-run has a deterministic id (`<job>-plan`, `<job>-q<depth>-<n>`, `<job>-follow-up<depth>`,
`<job>-report`) and is recorded here when it starts and when it ends, so a resumed job waits for
the runs in flight and re-runs none that finished.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from actors.research import report
from actors.research.budget import JobFailed, LimitReached, check_budget
from actors.research.store import FINISHED, JobRow, JobStore, totals_of
from bus import subjects
from bus.client import Bus
from bus.headers import Trace
from bus.runs import RunClient
from schemas._base import Message
from schemas.errors import ErrorCode
from schemas.research import (
    Citation,
    PhaseChanged,
    ResearchStatus,
    StopReason,
    SubQuestion,
    Subrun,
    SubrunFinished,
    SubrunKind,
    SubrunStarted,
    Totals,
)
from schemas.runs import RunCancelled, RunCompleted, RunEnd, RunFailed, RunRequest, RunStatus

__all__ = ["JobWork", "publish_job_event"]

PLANNER = "research-planner"
# a sub-run refused for its tenant (its budget is spent, its agent not allowed): the job fails, saying which
TENANT_REFUSALS = (ErrorCode.BUDGET_EXCEEDED, ErrorCode.FORBIDDEN)
WRITER = "research-writer"


async def publish_job_event(bus: Bus, row: JobRow, kind: str, event: Message, trace: Trace, *, msg_id: str) -> None:
    await bus.publish(subjects.research_event(row.tenant, row.id, kind), event, trace=trace, msg_id=msg_id)


@dataclass(frozen=True, slots=True)
class Step:
    """One sub-run of a job: what it is, who runs it on what, and its row as last read (None: none yet)."""

    run_id: str
    kind: SubrunKind
    depth: int
    agent: str
    prompt: str
    known: Subrun | None


class JobWork:
    """Drives jobs' sub-runs; `starting` holds a per-job lock while a budgeted sub-run is checked and started."""

    def __init__(self, bus: Bus, store: JobStore, *, concurrency: int) -> None:
        self.bus = bus
        self.store = store
        self.runs = RunClient(bus)
        self.concurrency = concurrency
        self.starting: dict[str, asyncio.Lock] = {}

    async def work(self, job_id: str, trace: Trace) -> tuple[str, list[Citation]]:
        """Plan, research round by round, write: each step skipped where its sub-run already finished."""
        row = await self.store.begin(job_id)
        if row.cancel_reason is not None:  # cancelled before it ran, or while no replica drove it
            raise asyncio.CancelledError
        spec = row.spec
        started = (row.started_at or datetime.now(UTC)).timestamp()
        left = started + spec.deadline_seconds - datetime.now(UTC).timestamp()
        try:
            async with asyncio.timeout(max(left, 0.0)):
                await self._plan(row, trace)
                for depth in range(1, spec.max_depth + 1):
                    if not await self._round(row, trace, depth) or depth == spec.max_depth:
                        break
                written = await self._write(row, trace)
        except TimeoutError:
            raise LimitReached(StopReason.DEADLINE) from None
        finally:
            self.starting.pop(job_id, None)
        if written.status != RunStatus.COMPLETED or not written.output:
            raise JobFailed(f"the report could not be written: {written.error or written.status}")
        cited = report.citations(written.output, await self.store.subruns(job_id))
        return report.with_sources(written.output, cited), cited

    async def _plan(self, row: JobRow, trace: Trace) -> None:
        spec = row.spec
        await self._phase(row, ResearchStatus.PLANNING, 0, trace)
        run_id = f"{row.id}-plan"
        known = {s.run_id: s for s in await self.store.subruns(row.id)}.get(run_id)
        prompt = report.plan_prompt(spec.question, spec.max_subtasks)
        plan = await self._subrun(row, trace, Step(run_id, SubrunKind.PLAN, 0, PLANNER, prompt, known))
        questions = report.questions_of(plan.output, spec.max_subtasks)
        if not questions:
            questions = [SubQuestion(question=spec.question, why="the plan gave no sub-questions")]
        await self.store.add_questions(row.id, 1, questions)

    async def _write(self, row: JobRow, trace: Trace) -> Subrun:
        await self._phase(row, ResearchStatus.SYNTHESIZING, 0, trace)
        subruns = await self.store.subruns(row.id)
        run_id = f"{row.id}-report"
        prompt = report.writer_prompt(row.spec.question, _answered(subruns))
        known = next((s for s in subruns if s.run_id == run_id), None)
        return await self._subrun(row, trace, Step(run_id, SubrunKind.REPORT, 0, WRITER, prompt, known))

    async def _round(self, row: JobRow, trace: Trace, depth: int) -> bool:
        """Answer this depth's sub-questions, then ask the planner for follow-ups; whether there are any."""
        spec = row.spec
        await self._phase(row, ResearchStatus.RESEARCHING, depth, trace)
        subruns = await self.store.subruns(row.id)
        slots = asyncio.Semaphore(self.concurrency)
        spent: list[LimitReached] = []

        async def answer(s: Subrun) -> None:
            async with slots:
                if spent:
                    return
                try:
                    step = Step(s.run_id, SubrunKind.QUESTION, depth, spec.agent, s.question or "", s)
                    await self._subrun(row, trace, step)
                except LimitReached as e:
                    if e.in_run:
                        raise
                    spent.append(e)

        await _all(answer(s) for s in subruns if s.kind is SubrunKind.QUESTION and s.depth == depth)
        if spent:
            raise spent[0]
        if depth == spec.max_depth:
            return False
        return await self._follow_up(row, trace, depth)

    async def _follow_up(self, row: JobRow, trace: Trace, depth: int) -> bool:
        """Ask the planner what the findings leave open: the next depth's sub-questions, if any."""
        spec = row.spec
        subruns = await self.store.subruns(row.id)
        room = spec.max_subtasks - sum(1 for s in subruns if s.kind is SubrunKind.QUESTION)
        if room <= 0:
            return False
        run_id = f"{row.id}-follow-up{depth}"
        prompt = report.follow_up_prompt(spec.question, _answered(subruns), room)
        known = next((s for s in subruns if s.run_id == run_id), None)
        follow_up = await self._subrun(row, trace, Step(run_id, SubrunKind.FOLLOW_UP, depth, PLANNER, prompt, known))
        questions = report.questions_of(follow_up.output, room)
        await self.store.add_questions(row.id, depth + 1, questions)
        return bool(questions)

    async def _subrun(self, row: JobRow, trace: Trace, step: Step) -> Subrun:
        """One executor run of the job, recorded before it starts and when it ends. A finished one is
        returned as recorded; one in flight when the job resumes is waited for, not asked for again."""
        known = step.known
        if known is not None and known.status in FINISHED:
            return known
        totals = await self._start(row, trace, step)
        budget = row.spec.budget
        used = totals.input_tokens + totals.output_tokens
        request = RunRequest(
            run_id=step.run_id,
            agent=step.agent,
            prompt=step.prompt,
            parent_run_id=row.id,
            max_tokens=budget.max_tokens - used if budget.max_tokens is not None else None,
            max_cost_usd=(budget.max_cost_usd - (totals.cost_usd or 0.0) if budget.max_cost_usd is not None else None),
            sources=row.spec.sources if step.kind is SubrunKind.QUESTION else [],
            wait_for_model=True,  # a job in the background waits out a provider outage
        )
        resumed = known is not None and known.status == RunStatus.RUNNING
        # on the research origin's subject: only the research actor may publish it, and its runs may run
        # the internal research agents (subjects.RunOrigin)
        end = await self.runs.run(request, trace, resume=resumed, origin=subjects.RunOrigin.RESEARCH)
        return await self._finish(row, trace, step, end)

    async def _start(self, row: JobRow, trace: Trace, step: Step) -> Totals:
        """Record the sub-run started (after the budget check, if the job has a budget); the job's totals
        before it (only needed, and read, when the job has a budget)."""
        budget = row.spec.budget
        limited = any(v is not None for v in (budget.max_subruns, budget.max_tokens, budget.max_cost_usd))
        known = step.known
        if known is not None and known.status != "pending":  # resumed while it runs
            return totals_of(await self.store.subruns(row.id)) if limited else Totals()
        question = known.question if known else None
        totals = Totals()
        if limited:  # one start at a time, so each budget check sees every start before it
            async with self.starting.setdefault(row.id, asyncio.Lock()):
                subruns = await self.store.subruns(row.id)
                check_budget(row, subruns)
                totals = totals_of(subruns)
                await self.store.start_subrun(row.id, step.run_id, step.kind, step.depth, question)
        else:
            await self.store.start_subrun(row.id, step.run_id, step.kind, step.depth, question)
        started = SubrunStarted(job_id=row.id, run_id=step.run_id, kind=step.kind, depth=step.depth, question=question)
        await publish_job_event(self.bus, row, "subrun_started", started, trace, msg_id=f"{step.run_id}:started")
        return totals

    async def _finish(self, row: JobRow, trace: Trace, step: Step, end: RunEnd) -> Subrun:
        run_id = step.run_id
        match end:
            case RunCompleted():
                sources = report.sources_of(bytes(end.new_messages)) if step.kind is SubrunKind.QUESTION else []
                await self.store.finish_subrun(
                    run_id, RunStatus.COMPLETED, output=end.output, sources=sources, usage=end.usage
                )
            case RunFailed():
                await self.store.finish_subrun(run_id, RunStatus.FAILED, error=end.error.message)
            case RunCancelled():
                await self.store.finish_subrun(run_id, RunStatus.CANCELLED, error=end.reason)
        subruns = await self.store.subruns(row.id)
        done = next(s for s in subruns if s.run_id == run_id)
        finished = SubrunFinished(
            job_id=row.id,
            run_id=run_id,
            kind=step.kind,
            status=done.status,
            usage=done.usage,
            totals=totals_of(subruns),
        )
        await publish_job_event(self.bus, row, "subrun_finished", finished, trace, msg_id=f"{run_id}:finished")
        if isinstance(end, RunFailed) and end.error.code in TENANT_REFUSALS:  # no later sub-run would start
            budget = end.error.details.get("budget")
            raise JobFailed(f"{end.error.code.value}{f' ({budget})' if budget else ''}: {end.error.message}")
        if isinstance(end, RunFailed) and end.error.code is ErrorCode.LIMIT_EXCEEDED:
            limit = end.error.details.get("limit", StopReason.MAX_TOKENS.value)
            raise LimitReached(StopReason(limit), in_run=True)
        return done

    async def _phase(self, row: JobRow, status: ResearchStatus, depth: int, trace: Trace) -> None:
        await self.store.set_status(row.id, status)
        changed = PhaseChanged(job_id=row.id, status=status, depth=depth)
        msg_id = f"{row.id}:phase:{status.value}:{depth}"
        await publish_job_event(self.bus, row, "phase", changed, trace, msg_id=msg_id)


def _answered(subruns: list[Subrun]) -> list[Subrun]:
    return [s for s in subruns if s.kind is SubrunKind.QUESTION and s.status == RunStatus.COMPLETED]


async def _all(work: Iterable[Awaitable[None]]) -> None:
    """Run all at once; the first failure cancels the rest (and is raised as it is, not in a group)."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
