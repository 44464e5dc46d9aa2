"""The executor: takes RunRequests, runs the agent, streams its output, records the run.

See docs/protocol.md, step 3 and "Cancel". A run is recorded before it starts, so a redelivery
(after a crash: no ack) restarts it with attempt + 1, and a redelivery of a finished run only
re-announces its end. Sub-runs (pipeline steps, subagent hand-offs) have ids derived from their
parent's (`<parent>-step<n>`, `<parent>-sub<k>`), so a restarted parent finds them instead of
starting them again. Cancelling is a flag in the table (a tombstone if the run has not come yet)
on the run and every run under it, plus a broadcast that reaches the replica running each, which
cancels the agent run. A request dead-lettered after failing ends its run `failed`, announced.
A restarted agent run resumes from its last finished step (actors/executor/journal.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, assert_never

import msgspec
import structlog
from nats.js.errors import NotFoundError
from pydantic_ai import CancellationToken
from pydantic_ai.messages import ToolCallPart
from pydantic_ai.models import Model

from actors._pages import fitting
from actors._postgres import DATABASE_DOWN, open_pool
from actors._postgres import health as postgres_health
from actors.executor.admission import Admission
from actors.executor.agent_run import run_agent
from actors.executor.agents import BUILT_IN, ModelDefaults, RunDeps, Runner, build_runners, load_file, load_providers
from actors.executor.breaker import Breakers
from actors.executor.catalog import catalog_endpoint
from actors.executor.compaction import ContextWindow
from actors.executor.config import ExecutorConfig
from actors.executor.costs import combined
from actors.executor.deployments import models_endpoint
from actors.executor.event_waits import watch_of
from actors.executor.fair_share import FairShare
from actors.executor.history import HistoryCache, read_history
from actors.executor.journal import journal_scope
from actors.executor.journal_store import JournalStore
from actors.executor.mcp_servers import McpServers
from actors.executor.output import OutputWriter
from actors.executor.park_store import Park, ParkStore, Resumable
from actors.executor.parking import Parked, Resumption, approvals_of, event_result, resumption
from actors.executor.pipelines import BUILT_IN_AGENTS, PIPELINE_PREFIX, PipelineSpec, load_pipelines, run_pipeline
from actors.executor.research_agents import RESEARCH_AGENTS
from actors.executor.steering import Inbox, Steering, steering_endpoint
from actors.executor.steering_store import SteeringStore
from actors.executor.store import Begun, RunsFull, RunStore, UsageStore
from actors.executor.summary_store import SummaryStore
from actors.executor.tool_service import tool_endpoints
from actors.executor.tools import ToolRegistry
from actors.executor.tree import nest
from actors.executor.usage import total_usage, total_usages, usage_endpoint
from bus import metrics, subjects
from bus.actor import Actor, Consumer, Delivery, Endpoint, being_cancelled
from bus.config import BusConfig
from bus.errors import BusError, Reject, Retry
from bus.headers import Trace
from bus.runs import CancelSignals, RunClient
from bus.streams import EXECUTOR_CMD, RUN_OUT, ConsumerSpec
from bus.tenants import TenantSettingsCache
from schemas._base import Message
from schemas.approvals import (
    Approval,
    ApprovalDecided,
    ApprovalList,
    ApprovalStatus,
    ApprovalView,
    CallResolved,
    DecideApproval,
    Decision,
    GetApproval,
    ListApprovals,
    ResumeRun,
    RunWaiting,
    Watching,
)
from schemas.errors import ErrorCode, ErrorReply
from schemas.pages import Keyset
from schemas.research import DocumentHits, FetchedPage, FetchPage, SearchDocuments
from schemas.runs import (
    STATUS_OF_END,
    CancelRun,
    ExecutorCommand,
    GetRun,
    GetRunTree,
    ListRuns,
    RunCancelled,
    RunCompleted,
    RunEnd,
    RunFailed,
    RunFinished,
    RunList,
    RunRecord,
    RunRequest,
    RunStarted,
    RunStatus,
    RunTree,
    RunView,
    Usage,
)
from schemas.stats import CountRuns, RunCount

__all__ = ["ExecutorActor"]

MIGRATIONS = Path(__file__).parent / "migrations"
CANCELLED = "cancelled by request"
LIST_MAX = 200  # runs in one page of the list


@dataclass(slots=True)
class ActiveRun:
    """A run this replica is running, and what stops it when its cancel signal comes."""

    token: CancellationToken
    reason: str | None = None
    steps: asyncio.Future[tuple[RunEnd, Usage]] | None = None  # a pipeline's (no agent run for the token to stop)
    inbox: Inbox | None = None  # its steering messages (actors/executor/steering.py)

    def cancel(self, signal: CancelRun) -> None:
        self.reason = signal.reason
        self.token.cancel()
        if self.steps is not None:
            self.steps.cancel()

    def cancelled(self, run_id: str) -> RunCancelled:
        return RunCancelled(run_id=run_id, reason=self.reason or CANCELLED)


class ExecutorActor(Actor):
    name = subjects.ActorName.EXECUTOR
    unavailable_errors = DATABASE_DOWN
    description = "runs pydantic-ai agents and streams their output"

    def __init__(self, bus_config: BusConfig, config: ExecutorConfig, *, model_override: Model | None = None) -> None:
        super().__init__(bus_config)
        self.config = config
        self.model_override = model_override
        self.runners: dict[str, Runner] = {}
        self.pipelines: dict[str, PipelineSpec] = {}
        self.histories = HistoryCache()  # conversations' histories read by reference, for their next turns
        self.tools = ToolRegistry(McpServers({}))  # built at start; its MCP servers live as long as the actor
        self._store: RunStore | None = None
        self._parks: ParkStore | None = None
        self._expiry: asyncio.Task[None] | None = None
        self._summaries: SummaryStore | None = None
        self._runs: RunClient | None = None
        self._cancels: CancelSignals[CancelRun] | None = None
        self._steering: Steering | None = None
        self._breakers: Breakers | None = None
        self._tenants: TenantSettingsCache | None = None
        self._admission: Admission | None = None
        self._models = contextlib.AsyncExitStack()  # provider models held open (their HTTP clients) while it runs
        self.fair = FairShare(config.max_concurrent_runs)  # the consumer hands over at most that many at once

    @property
    def store(self) -> RunStore:
        if self._store is None:
            raise RuntimeError("executor is not started")
        return self._store

    @property
    def parks(self) -> ParkStore:
        if self._parks is None:
            raise RuntimeError("executor is not started")
        return self._parks

    @property
    def admission(self) -> Admission:
        if self._admission is None:
            raise RuntimeError("executor is not started")
        return self._admission

    @property
    def runs(self) -> RunClient:
        if self._runs is None:
            raise RuntimeError("executor is not started")
        return self._runs

    @property
    def breakers(self) -> Breakers:
        if self._breakers is None:
            raise RuntimeError("executor is not started")
        return self._breakers

    @property
    def steering(self) -> Steering:
        if self._steering is None:
            raise RuntimeError("executor is not started")
        return self._steering

    @property
    def cancels(self) -> CancelSignals[CancelRun]:
        if self._cancels is None:
            raise RuntimeError("executor is not started")
        return self._cancels

    def routes(self) -> Sequence[Consumer[Any] | Endpoint[Any]]:
        return (
            Consumer(
                ConsumerSpec(EXECUTOR_CMD, "executor-cmd", subjects.executor_commands()),
                ExecutorCommand,
                self._on_command,
                concurrency=self.config.max_concurrent_runs,
            ),
            Endpoint("get_run", GetRun, self._get_run),
            Endpoint("cancel", CancelRun, self._cancel),
            steering_endpoint(lambda: self.steering),
            Endpoint("tree", GetRunTree, self._tree),
            Endpoint("list_runs", ListRuns, self._list_runs),
            Endpoint("run_counts", CountRuns, self._run_counts),
            Endpoint("list_approvals", ListApprovals, self._list_approvals),
            Endpoint("get_approval", GetApproval, self._get_approval),
            Endpoint("decide_approval", DecideApproval, self._decide_approval),
            catalog_endpoint(lambda: self.runners, lambda: self.pipelines, internal=RESEARCH_AGENTS.keys()),
            usage_endpoint(lambda: UsageStore(self.store.pool), lambda: self.admission),
            models_endpoint(lambda: self.runners, lambda: self.breakers),
            *tool_endpoints(lambda: self.tools, self._tool_deps),
        )

    async def on_start(self) -> None:
        agents_file = load_file(self.config.agents_file)
        specs = {**BUILT_IN_AGENTS, **RESEARCH_AGENTS, **BUILT_IN, **agents_file.agents}
        self.pipelines = load_pipelines(self.config.agents_file)
        self._breakers = Breakers(self.bus, self.config.breaker)
        servers = McpServers(agents_file.mcp_servers)
        self.tools = ToolRegistry.build({n: s.tools for n, s in specs.items()}, agents_file.tools, servers)
        await servers.start()  # once per process, shared by every run
        self.runners = build_runners(
            specs,
            default_model=self.config.default_model,
            offline=self.config.offline,
            override=self.model_override,
            providers=load_providers(self.config.agents_file),
            breakers=self._breakers,
            defaults=ModelDefaults(max_tokens=self.config.max_output_tokens, timeout_s=self.config.model_timeout_s),
            registry=self.tools,
        )
        for runner in self.runners.values():
            if runner.model.offline:
                self._log.warning(
                    "agent uses the offline model: its replies are not an LLM's",
                    agent=runner.name,
                    reason=runner.model.reason,
                )
            else:
                budget = runner.compaction.budget_tokens if runner.compaction else "unknown: history sent whole"
                self._log.info("agent ready", agent=runner.name, model=runner.model.name, context_budget=budget)
            if runner.model.route is not None:
                await runner.model.route.hold_open(self._models)
        self._store = RunStore(await open_pool(self.config.database_url, schema="executor", migrations=MIGRATIONS))
        self._summaries = SummaryStore(self._store.pool)
        self._parks = ParkStore(self._store.pool)
        self._runs = RunClient(self.bus)
        self._cancels = CancelSignals(self.bus, subjects.executor_cancels(), CancelRun, lambda c: c.run_id)
        await self._cancels.start()
        self._steering = Steering(self.bus, SteeringStore(self._store.pool), self._store)
        await self._steering.start()
        self._tenants = TenantSettingsCache(self.bus)
        await self._tenants.start()
        self._admission = Admission(self._tenants, self._store, RESEARCH_AGENTS.keys())
        self._expiry = asyncio.create_task(self._expire_approvals())

    async def on_stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
        await self._models.aclose()
        await self.tools.servers.stop()
        if self._cancels is not None:
            await self._cancels.stop()
        if self._steering is not None:
            await self._steering.stop()
        if self._tenants is not None:
            await self._tenants.stop()
        if self._store is not None:
            await self._store.pool.close()

    async def health_checks(self) -> dict[str, str]:
        return await postgres_health(self._store.pool if self._store else None)

    # --- commands ----------------------------------------------------------------------------

    async def _on_command(self, command: ExecutorCommand, delivery: Delivery) -> None:
        match command:
            case RunRequest():
                await self._run(command, delivery)
            case ResumeRun():
                await self._resume(command, delivery)
            case CallResolved():
                await self._call_resolved(command, delivery.tenant, delivery.trace)
            case CancelRun():
                try:
                    await self._request_cancel(command, delivery.tenant)
                except BusError as e:
                    raise Reject(e.message) from e
            case _:
                assert_never(command)

    async def _run(self, req: RunRequest, delivery: Delivery, resume: ResumeRun | None = None) -> None:
        """Run it once the tenant's fair share of this replica's slots, and its `concurrent_runs` quota, admit it;
        until then it goes back to the stream for a moment (actors/executor/fair_share.py). With `resume`, go on
        with a parked run (its slot was given back when it parked, so it is taken again here)."""
        tenant = delivery.tenant
        inside = _inside_a_run(req)
        if inside:
            self.fair.hold(tenant)
        elif not self.fair.take(tenant):
            raise Retry(
                "the tenant holds its share of the run slots", delay=self.config.fair_share_retry_s, waiting=True
            )
        try:
            quota = 0 if inside or self._tenants is None else self._tenants.get(tenant).quotas.concurrent_runs or 0
            if resume is None:
                await self._run_admitted(req, delivery, max_running=quota)
            else:
                resumable = await self.parks.resume(resume.run_id, tenant, resume.park)
                if isinstance(resumable, Resumable):  # else not parked there any more (or ended): nothing to do
                    await self._run_admitted(resumable.request, delivery, max_running=0, resumed=resumable)
        except RunsFull as e:
            raise Retry(
                f"concurrent_runs quota: {e.running} runs running", delay=self.config.fair_share_retry_s, waiting=True
            ) from e
        finally:
            self.fair.release(tenant)

    async def _resume(self, command: ResumeRun, delivery: Delivery) -> None:
        """Go on with a parked run whose calls are all decided (or which was cancelled while it waited)."""
        req = await self.parks.request_of(command.run_id, delivery.tenant)
        if req is not None:  # else it finished since (this resume came again) or is not the tenant's
            await self._run(req, delivery, resume=command)

    async def _park(
        self,
        req: RunRequest,
        tenant: str,
        trace: Trace,
        writer: OutputWriter,
        parked: Parked,
        usage: Usage,
        origin: subjects.RunOrigin | None,
        agent: str,
    ) -> None:
        """Store the park, mark the run waiting, say so on its output and as an event; the request is then acked
        and the slot given back. Each event wait is handed to the trigger actor."""
        approvals = approvals_of(parked.requests, req, agent=agent, ttl_s=self.config.approval_ttl_s)
        waits = {
            call.tool_call_id: parked.requests.metadata.get(call.tool_call_id, {}) for call in parked.requests.calls
        }
        park = Park(
            request=req,
            origin=origin.value if origin else None,
            messages=parked.messages,
            base=parked.base,
            usage=usage,
            approvals=approvals,
            waits=waits,
        )
        number = await self.parks.park(req.run_id, tenant, park)
        await self._watch(tenant, req.run_id, trace)  # before it says it waits: whoever hears it may send the event
        shown = [msgspec.structs.replace(a, tenant=tenant, park=number) for a in approvals]
        waiting = RunWaiting(
            run_id=req.run_id,
            approvals=shown,
            waits=list(waits),
            task_id=req.task_id,
            conversation_id=req.conversation_id,
            parent_run_id=req.parent_run_id,
        )
        await writer.publish(waiting, msg_id=f"{req.run_id}:waiting:{number}")
        await self.bus.publish(
            subjects.executor_waiting(tenant, req.run_id), waiting, trace=trace, msg_id=f"{req.run_id}:waiting:{number}"
        )
        metrics.RUNS_PARKED.inc()

    async def _watch(self, tenant: str, run_id: str, trace: Trace) -> None:
        """Hand the trigger actor each event wait of the run's park not answered yet (again after a crash:
        the trigger stores each once). Until it answers, the run's request goes back and this is retried."""
        service = subjects.service(subjects.ActorName.TRIGGER, "watch")
        for park, tool_call_id, metadata in await self.parks.unresolved_waits(run_id):
            watch = watch_of(run_id, park, tool_call_id, metadata)
            try:
                await self.bus.request(service, watch, Watching, trace=trace)
            except BusError as e:
                if e.code is ErrorCode.INVALID:  # the wait cannot be followed: answered as timed out at once
                    resolved = CallResolved(run_id=run_id, park=park, tool_call_id=tool_call_id, timed_out=True)
                    await self._call_resolved(resolved, tenant, trace)
                    continue
                reason = f"the trigger actor cannot take the run's event wait: {e.message}"
                raise Retry(reason, delay=1.0, waiting=True) from e

    async def _call_resolved(self, command: CallResolved, tenant: str, trace: Trace) -> None:
        """An event wait matched (or timed out): its result is stored; the last of its park resumes the run."""
        complete = await self.parks.resolve_wait(
            command.run_id, tenant, command.park, command.tool_call_id, event_result(command)
        )
        if complete:
            await self._send_resume(tenant, command.run_id, command.park, trace)

    async def _send_resume(self, tenant: str, run_id: str, park: int, trace: Trace) -> None:
        subject = subjects.executor_subrun_command(tenant, run_id, subjects.RunOrigin.RESUME)
        await self.bus.publish(
            subject, ResumeRun(run_id=run_id, park=park), trace=trace, msg_id=f"{run_id}:resume:{park}"
        )

    async def _run_admitted(
        self, req: RunRequest, delivery: Delivery, *, max_running: int, resumed: Resumable | None = None
    ) -> None:
        tenant = delivery.tenant
        trace = delivery.trace.child(run_id=req.run_id)
        structlog.contextvars.bind_contextvars(run_id=req.run_id)
        depth = _depth(req)
        runner = self.runners.get(req.agent)
        active = ActiveRun(CancellationToken())
        with (  # before recording: no signal is missed
            self.cancels.watching(tenant, req.run_id, active.cancel),
            self.steering.watching(tenant, req.run_id) as active.inbox,
        ):
            if resumed is not None:
                begun: Begun | None = Begun(
                    attempt=resumed.attempt, cancel_requested=resumed.cancel_requested, end=None
                )
            else:
                begun = await self.store.begin(
                    req,
                    tenant=tenant,
                    model=runner.model.name if runner else ("pipeline" if self._pipeline_of(req) else ""),
                    offline=runner.model.offline if runner else False,
                    max_running=max_running,
                )
            if begun is None:
                raise Reject(f"run id {req.run_id} belongs to another tenant")
            if begun.end is not None:  # ended before (redelivery, or cancelled before it arrived)
                await self._announce(req, tenant, trace, begun.end)
                return
            if begun.waiting:  # parked (a redelivery of its request): it goes on once its calls are decided
                await self._watch(tenant, req.run_id, trace)  # each of its event waits is followed
                return
            if req.wait_for_model and runner is not None and not begun.cancel_requested:
                _wait_if_unavailable(runner)
            writer = OutputWriter(self.bus, subjects.run_output(tenant, req.run_id), trace)
            try:
                if resumed is not None:
                    origin = subjects.RunOrigin(resumed.origin) if resumed.origin else None
                else:
                    origin = subjects.run_origin(delivery.subject)
                # a run cancelled while it waited ends cancelled without going on
                resume = resumption(resumed) if resumed is not None and not begun.cancel_requested else None
                ended, usage = await self._perform(req, begun, active, writer, trace, depth, origin, resume)
                if resumed is not None:
                    usage = combined([resumed.usage, usage])
                if isinstance(ended, Parked):
                    assert runner is not None  # only an agent's run parks
                    await self._park(req, tenant, trace, writer, ended, usage, origin, runner.name)
                    return
                end = ended
                if req.wait_for_model and _waits(end):  # it found every model down: redone once one may answer
                    raise Retry("every model of the agent is unavailable", delay=_retry_after(end), waiting=True)
                # stored first, so whoever hears of the end reads it (and a failed write announces nothing);
                # then both announcements at once: each is deduped, and a redelivery repeats them
                await self.store.finish(req.run_id, end, usage)
                if resumed is not None:
                    await self.parks.forget(req.run_id)
                self._count_end(req, runner, end, usage)
                if req.end_by_requester:
                    await writer.flush()  # every delta is on the stream before the requester ends it
                    await self._publish_finished(req, tenant, trace, end)
                else:
                    await asyncio.gather(
                        writer.publish(end, msg_id=f"{req.run_id}:end"), self._publish_finished(req, tenant, trace, end)
                    )
            finally:
                await writer.close()

    async def _perform(
        self,
        req: RunRequest,
        begun: Begun,
        active: ActiveRun,
        writer: OutputWriter,
        trace: Trace,
        depth: int,
        origin: subjects.RunOrigin | None,
        park: Resumption | None = None,
    ) -> tuple[RunEnd | Parked, Usage]:
        """Run the agent or the pipeline the request names, if the tenant may and has budget left; how it ended
        (or parked). `park`: go on with a parked run from there."""
        if begun.cancel_requested or active.token.cancelled:
            return active.cancelled(req.run_id), Usage()
        allowance = await self.admission.admit(req, trace.tenant, origin)
        if isinstance(allowance, ErrorReply):
            return RunFailed(run_id=req.run_id, error=allowance), Usage()
        resume = begun.attempt > 1  # re-done after a crash: sub-runs may exist already
        if (pipeline := self._pipeline_of(req)) is not None:
            writer.emit(RunStarted(run_id=req.run_id, agent=req.agent, model="pipeline", attempt=begun.attempt))
            return await self._pipeline(pipeline, req, active, trace, depth, resume=resume)
        runner = self.runners.get(req.agent)
        if runner is None:
            error = ErrorReply(code=ErrorCode.INVALID, message=f"unknown agent or pipeline {req.agent!r}")
            return RunFailed(run_id=req.run_id, error=error), Usage()
        model = runner.model
        if req.stream and park is None:  # published while the model starts; a run nobody watches skips it
            writer.emit(
                RunStarted(
                    run_id=req.run_id, agent=runner.name, model=model.name, offline=model.offline, attempt=begun.attempt
                )
            )
        deps = self._deps(runner, req, trace, depth, resume=resume, handed_off=_handoffs(park))
        return await run_agent(
            runner,
            req,
            deps,
            token=active.token,
            writer=writer,
            cancel_reason=lambda: active.reason or CANCELLED,
            history=lambda: read_history(self.bus, self.histories, req, trace),
            context=ContextWindow(runner.compaction, self._summaries, trace.tenant, req.conversation_id),
            allowance=allowance,
            resume=park,
            # a stretch after a park is journaled apart (its steps are numbered from its own start); a first
            # attempt has nothing journaled to read
            journal=journal_scope(
                JournalStore(self.store.pool),
                trace.tenant,
                req.run_id,
                park.park if park is not None else 0,
                fresh=begun.attempt == 1 and park is None,
            ),
            steering=active.inbox.capability(writer, catch_up=_catch_up(begun, park)) if active.inbox else None,
        )

    def _count_end(self, req: RunRequest, runner: Runner | None, end: RunEnd, usage: Usage) -> None:
        """The run in the run, token and cost metrics, labelled only by what the agents file names."""
        if runner is not None:
            answered = end.model if isinstance(end, RunCompleted) else ""  # a fallback model may have answered
            agent, model = runner.name, answered or runner.model.name
        elif self._pipeline_of(req) is not None:
            agent, model = req.agent, "pipeline"
        else:  # a name the caller made up: not a label
            agent, model = "unknown", ""
        metrics.RUNS.labels(agent, model, STATUS_OF_END[type(end)].value).inc()
        if usage.input_tokens:
            metrics.TOKENS.labels(agent, model, "input").inc(usage.input_tokens)
        if usage.output_tokens:
            metrics.TOKENS.labels(agent, model, "output").inc(usage.output_tokens)
        if usage.priced_cost_usd:
            metrics.COST.labels(agent, model).inc(usage.priced_cost_usd)

    def _pipeline_of(self, req: RunRequest) -> PipelineSpec | None:
        if not req.agent.startswith(PIPELINE_PREFIX):
            return None
        return self.pipelines.get(req.agent.removeprefix(PIPELINE_PREFIX))

    async def _pipeline(
        self, spec: PipelineSpec, req: RunRequest, active: ActiveRun, trace: Trace, depth: int, *, resume: bool
    ) -> tuple[RunEnd, Usage]:
        async def run_step(step: RunRequest) -> RunEnd:
            return await self.runs.run(step, trace, resume=resume, origin=subjects.RunOrigin.SUBRUN)

        name = req.agent.removeprefix(PIPELINE_PREFIX)
        steps = asyncio.ensure_future(
            run_pipeline(name, spec, req, depth=depth, runners=self.runners, run_step=run_step)
        )
        active.steps = steps  # a cancel signal cancels it; the steps' runs are cancelled with their parent
        try:
            return await steps
        except asyncio.CancelledError:
            if steps.cancelled() and not being_cancelled():
                return active.cancelled(req.run_id), Usage()
            raise  # the actor is stopping: the request goes back, and the pipeline resumes elsewhere

    def _deps(
        self, runner: Runner, req: RunRequest, trace: Trace, depth: int, *, resume: bool, handed_off: int = 0
    ) -> RunDeps:
        # the parent's k-th hand-off is its sub-run `<parent>-sub<k>` (counting those before it parked)
        handoffs = itertools.count(handed_off + 1)

        async def subrun(agent: str, task: str, used: int) -> str:
            return await self._handoff(req, trace, depth + 1, agent, task, used, n=next(handoffs), resume=resume)

        tenant, run_id = trace.tenant, req.run_id
        return RunDeps(
            run_id=run_id,
            tenant=tenant,
            context=req.context,
            depth=depth,
            subagents=runner.subagents,
            max_depth=self.config.max_subagent_depth,
            subrun=subrun,
            search=lambda q: self._source(tenant, run_id, "search", SearchDocuments(query=q, limit=5), DocumentHits),
            fetch=lambda url: self._source(tenant, run_id, "fetch", FetchPage(url=url), FetchedPage),
            sources=frozenset(req.sources) if req.sources is not None else None,
        )

    def _tool_deps(self, trace: Trace) -> RunDeps:
        """What a tool called on its own (POST /v1/tools/{name}/call) reaches: its tenant's sources."""
        tenant, run_id = trace.tenant, f"tool-call-{trace.correlation_id}"
        return RunDeps(
            run_id=run_id,
            tenant=tenant,
            context=None,
            search=lambda q: self._source(tenant, run_id, "search", SearchDocuments(query=q, limit=5), DocumentHits),
            fetch=lambda url: self._source(tenant, run_id, "fetch", FetchPage(url=url), FetchedPage),
        )

    async def _handoff(
        self, parent: RunRequest, trace: Trace, depth: int, agent: str, task: str, used: int, *, n: int, resume: bool
    ) -> str:
        """Run `agent` on `task` as its own executor run under `parent`, through the bus; its answer.
        The sub-run gets what is left of the parent's token budget."""
        max_tokens = parent.max_tokens - used if parent.max_tokens is not None else None
        if max_tokens is not None and max_tokens <= 0:
            return "refused: this run's token budget is spent; answer with what you have"
        child = RunRequest(
            run_id=f"{parent.run_id}-sub{n}",
            agent=agent,
            prompt=task,
            parent_run_id=parent.run_id,
            metadata={"depth": str(depth)},
            max_tokens=max_tokens,
            wait_for_model=parent.wait_for_model,
        )
        end = await self.runs.run(child, trace, resume=resume, origin=subjects.RunOrigin.SUBRUN)
        match end:
            case RunCompleted():
                return end.output
            case RunFailed():
                return f"the {agent} agent failed: {end.error.message}"
            case RunCancelled():
                return f"the {agent} agent's run was cancelled"
            case _:
                assert_never(end)

    async def _source(self, tenant: str, run_id: str, verb: str, query: Message, reply: type[Any]) -> str:
        """A source tool's result: the research actor's answer to `verb` as JSON, or what went wrong."""
        service = subjects.service(subjects.ActorName.RESEARCH, verb)
        trace = Trace(tenant=tenant, run_id=run_id)
        try:
            found = await self.bus.request(service, query, reply, trace=trace, timeout=30.0)
        except BusError as e:
            return f"{verb} failed: {e.message}"
        return msgspec.json.encode(found.hits if isinstance(found, DocumentHits) else found).decode()

    # --- announcing an end -------------------------------------------------------------------

    async def _announce(self, req: RunRequest, tenant: str, trace: Trace, end: RunEnd) -> None:
        """Announce a run that already ended: its terminal output (deduped; unless its requester does
        that) and RunFinished."""
        if not req.end_by_requester:
            output = subjects.run_output(tenant, req.run_id)
            await self.bus.publish(output, end, trace=trace, msg_id=f"{req.run_id}:end")
        await self._publish_finished(req, tenant, trace, end)

    async def _publish_finished(self, req: RunRequest, tenant: str, trace: Trace, end: RunEnd) -> None:
        finished = RunFinished(
            run_id=req.run_id, conversation_id=req.conversation_id, parent_run_id=req.parent_run_id, result=end
        )
        await self.bus.publish(
            subjects.executor_finished(tenant, req.run_id), finished, trace=trace, msg_id=f"{req.run_id}:finished"
        )

    async def on_dead_letter(self, body: object | None, delivery: Delivery, reason: str) -> None:
        """A run request given up on ends its run `failed` with the reason, announced so waiters go on.
        (An undecodable one names no run it could end.) If the run had ended but its end could not be
        announced (too large for the bus, say), it is recorded and announced as failed instead."""
        if not isinstance(body, RunRequest):
            return
        tenant, trace = delivery.tenant, delivery.trace.child(run_id=body.run_id)
        failed = RunFailed(run_id=body.run_id, error=ErrorReply(code=ErrorCode.INTERNAL, message=f"gave up: {reason}"))
        end = await self.store.give_up(body, tenant, failed, over_an_end=False)
        if end is None:
            return  # another tenant's run id
        try:
            await self._announce(body, tenant, trace, end)
        except Exception as e:
            if end == failed:
                raise
            self._log.warning("the run's end cannot be announced: announcing it failed", error=repr(e))
            message = f"its end could not be published: {type(e).__name__}"
            failed = RunFailed(run_id=body.run_id, error=ErrorReply(code=ErrorCode.INTERNAL, message=message))
            if (end := await self.store.give_up(body, tenant, failed, over_an_end=True)) is not None:
                await self._announce(body, tenant, trace, end)

    # --- cancel ------------------------------------------------------------------------------

    async def _request_cancel(self, cancel: CancelRun, tenant: str) -> RunView:
        found = await self.store.request_cancel(cancel.run_id, tenant, cancel.reason)
        if found is None:
            raise BusError(ErrorCode.NOT_FOUND, f"no run {cancel.run_id}")
        record, below = found
        await self.bus.broadcast(subjects.executor_cancel(tenant, cancel.run_id), cancel)
        for run_id in below:
            signal = CancelRun(run_id=run_id, reason=f"its parent run {cancel.run_id} was cancelled")
            await self.bus.broadcast(subjects.executor_cancel(tenant, run_id), signal)
        for run_id in (cancel.run_id, *below):  # a parked run runs nowhere: resumed, it ends cancelled
            if (park := await self.parks.park_of(run_id, tenant)) is not None:
                await self._send_resume(tenant, run_id, park, Trace(tenant=tenant, run_id=run_id))
        return RunView(run=record)

    async def _cancel(self, cancel: CancelRun, trace: Trace) -> Message:
        return await self._request_cancel(cancel, trace.tenant)

    # --- approvals ---------------------------------------------------------------------------

    async def _list_approvals(self, query: ListApprovals, trace: Trace) -> Message:
        limit = max(1, min(query.limit, LIST_MAX))
        found = await self.parks.page(trace.tenant, status=query.status, run_id=query.run_id, limit=limit)
        return ApprovalList(approvals=found[: fitting(found)])

    async def _get_approval(self, query: GetApproval, trace: Trace) -> Message:
        found = await self.parks.get(query.approval_id, trace.tenant)
        if found is None:
            raise BusError(ErrorCode.NOT_FOUND, f"no approval {query.approval_id}")
        return ApprovalView(approval=found)

    async def _decide_approval(self, command: DecideApproval, trace: Trace) -> Message:
        """Decide one call: approve it (as it is, or `edit`ed), or deny it with a reason the model sees."""
        edited: str | None = None
        if command.decision is Decision.EDIT:
            if command.arguments is None:
                raise BusError(ErrorCode.INVALID, "an edit needs `arguments`: the arguments to run the tool with")
            edited = json.dumps(command.arguments, ensure_ascii=False)
        elif command.arguments is not None:
            raise BusError(ErrorCode.INVALID, "`arguments` go with the decision `edit` only")
        status = DECIDED[command.decision]
        decided = await self.parks.decide(
            command.approval_id, trace.tenant, status, by=command.decided_by, reason=command.reason, edited_args=edited
        )
        if decided is None:
            raise BusError(ErrorCode.NOT_FOUND, f"no approval {command.approval_id}")
        if isinstance(decided, Approval):
            raise BusError(
                ErrorCode.CONFLICT,
                f"approval {command.approval_id} is {decided.status.value} already",
                {"status": decided.status.value, "decided_by": decided.decided_by or ""},
            )
        metrics.APPROVALS_DECIDED.labels(status.value).inc()
        await self._decided(trace.tenant, decided.approval, complete=decided.complete, trace=trace)
        return ApprovalView(approval=decided.approval)

    async def _decided(self, tenant: str, approval: Approval, *, complete: bool, trace: Trace) -> None:
        """Say so on the run's output; the last decision of a park resumes the run."""
        output = subjects.run_output(tenant, approval.run_id)
        await self.bus.publish(
            output,
            ApprovalDecided(run_id=approval.run_id, approval=approval),
            trace=trace,
            msg_id=f"{approval.id}:decided",
        )
        if complete:
            await self._send_resume(tenant, approval.run_id, approval.park, trace)

    async def _expire_approvals(self) -> None:
        """Deny the approvals past their expiry (every replica looks; each is expired once)."""
        while True:
            await asyncio.sleep(self.config.expiry_interval_s)
            try:
                for approval, complete in await self.parks.expire():
                    metrics.APPROVALS_DECIDED.labels(ApprovalStatus.EXPIRED.value).inc()
                    trace = Trace(tenant=approval.tenant, run_id=approval.run_id)
                    await self._decided(approval.tenant, approval, complete=complete, trace=trace)
            except Exception as e:  # the database or the bus is away: the next round tries again
                self._log.warning("could not expire approvals", error=repr(e))

    # --- queries -----------------------------------------------------------------------------

    async def _tree(self, query: GetRunTree, trace: Trace) -> Message:
        runs = await self.store.tree(query.run_id, trace.tenant)
        if not runs:
            raise BusError(ErrorCode.NOT_FOUND, f"no run {query.run_id}")
        return RunTree(runs=runs, root=nest(query.run_id, runs))

    async def _run_counts(self, query: CountRuns, trace: Trace) -> Message:
        by_status, recent = await self.store.counts(trace.tenant, query.since)
        return RunCount(by_status=by_status, since=recent)

    async def _get_run(self, query: GetRun, trace: Trace) -> Message:
        """The run's record; a turn queued behind another has output (`accepted`) but no record yet: `queued`."""
        record = await self.store.get(query.run_id, trace.tenant)
        if record is None:
            if not await self._has_output(trace.tenant, query.run_id):
                raise BusError(ErrorCode.NOT_FOUND, f"no run {query.run_id}")
            now = datetime.now(UTC)
            record = RunRecord(
                id=query.run_id, tenant=trace.tenant, agent="", model="", status=RunStatus.QUEUED, created_at=now
            )
        total = await total_usage(UsageStore(self.store.pool), trace.tenant, query.run_id) if query.with_total else None
        return RunView(run=record, total_usage=total)

    async def _list_runs(self, query: ListRuns, trace: Trace) -> Message:
        """A page of the tenant's runs, each with its total usage (one query for the page's); fewer than asked
        once they hold PAGE_BYTES (a run's error text can be long)."""
        limit = max(1, min(query.limit, LIST_MAX))
        found = await self.store.page(trace.tenant, query, limit=limit + 1)  # one more: is there a next page
        page = found[: min(limit, fitting(found))]
        totals = await total_usages(UsageStore(self.store.pool), trace.tenant, [r.id for r in page])
        last = page[-1] if page else None
        next_after = Keyset(at=last.created_at, id=last.id) if len(found) > len(page) and last else None
        views = [RunView(run=r, total_usage=totals.get(r.id, r.usage)) for r in page]
        return RunList(runs=views, next_after=next_after)

    async def _has_output(self, tenant: str, run_id: str) -> bool:
        subject = subjects.run_output(tenant, run_id)
        try:
            await self.bus.js.get_msg(RUN_OUT.name, seq=1, subject=subject, next=True, direct=True)
        except NotFoundError:
            return False
        return True


DECIDED = {
    Decision.APPROVE: ApprovalStatus.APPROVED,
    Decision.DENY: ApprovalStatus.DENIED,
    Decision.EDIT: ApprovalStatus.EDITED,
}


def _handoffs(park: Resumption | None) -> int:
    """How many hand-offs (ask_agent calls) a parked run made before it parked: its next one is numbered after."""
    if park is None:
        return 0
    return sum(
        1
        for message in park.messages[park.base :]
        for part in message.parts
        if isinstance(part, ToolCallPart) and part.tool_name == "ask_agent"
    )


def _wait_if_unavailable(runner: Runner) -> None:
    """A run that may wait, for an agent whose every deployment is known open: back to the stream until the
    first breaker's cool-down ends (a nak with that delay; waiting is never counted toward dead-lettering)."""
    route = runner.model.route
    if route is not None and (wait := route.retry_after_s()) is not None:
        raise Retry("every model of the agent is unavailable", delay=max(wait, 1.0), waiting=True)


def _waits(end: RunEnd) -> bool:
    return isinstance(end, RunFailed) and end.error.code is ErrorCode.MODEL_UNAVAILABLE


def _retry_after(end: RunEnd) -> float:
    seconds = end.error.details.get("retry_after_s", "1") if isinstance(end, RunFailed) else "1"
    return max(float(seconds), 1.0)


def _inside_a_run(req: RunRequest) -> bool:
    """A pipeline's step or a subagent hand-off (`<parent>-step<n>`, `<parent>-sub<k>`): its parent run holds a
    slot and waits for it. (A research job's sub-runs have the job as parent: runs of their own.)"""
    parent = req.parent_run_id
    if parent is None or not req.run_id.startswith(f"{parent}-"):
        return False
    rest = req.run_id.removeprefix(f"{parent}-")
    return rest.removeprefix("step").isdigit() or rest.removeprefix("sub").isdigit()


def _catch_up(begun: Begun, park: Resumption | None) -> bool:
    """Whether steering messages may be stored that no inbox of this run saw: it is re-done after a crash, or
    goes on after a park (one run started fresh registers its inbox before its record exists)."""
    return begun.attempt > 1 or park is not None


def _depth(req: RunRequest) -> int:
    """How many subagent hand-offs are above this run (metadata `depth`, set by the executor itself)."""
    depth = req.metadata.get("depth", "0") or "0"
    if not depth.isdigit():
        raise Reject(f"metadata depth must be a whole number, not {depth[:40]!r}")
    return int(depth)
