"""/v1/research: start a research job, list them, follow one (SSE), read its report, cancel it, and list or retry the
deliveries of its result (the notifier keeps them under the job's id as their `task_run_id`)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.response import Stream

from bus import subjects
from bus.streams import RESEARCH_EVT
from gateway.answers import DeliveryPage, ResearchPage, ResearchStarted, shown_once
from gateway.caller import Caller
from gateway.checks import check_notification_config
from gateway.cursors import After, Limit, cursor, keyset
from gateway.errors import ApiError
from gateway.sse import sse_response
from gateway.state import Stored, ident, stored_response
from gateway.views import full_json
from schemas.errors import ErrorCode
from schemas.notifier import DeliveryList, DeliveryRecord, DeliveryView, ListDeliveries, RetryDelivery
from schemas.research import (
    CancelResearch,
    GetResearch,
    ListResearch,
    ResearchEvent,
    ResearchFinished,
    ResearchJob,
    ResearchList,
    ResearchSpec,
    ResearchStatus,
    ResearchView,
    StartResearch,
)

__all__ = ["ResearchController"]

RESEARCH = subjects.ActorName.RESEARCH
NOTIFIER = subjects.ActorName.NOTIFIER


class NewResearch(ResearchSpec, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of `POST /v1/research`: the fields of `StartResearch` but its id."""


async def _job(caller: Caller, job_id: str) -> ResearchJob:
    """The job, or 404 for an unknown (or another tenant's) one."""
    return (await caller.ask(RESEARCH, "get_research", GetResearch(job_id=ident(job_id)), ResearchView)).job


async def _deliveries(caller: Caller, job_id: str) -> DeliveryList:
    job = await _job(caller, job_id)
    return await caller.ask(NOTIFIER, "list_deliveries", ListDeliveries(task_run_id=job.id), DeliveryList)


class ResearchController(Controller):
    path = "/v1/research"
    tags = ["research"]

    @post("/", status_code=202, summary="Start a research job: plan, fan out over sources, write a cited report")
    async def start(self, caller: Caller, data: JSONBody[NewResearch]) -> Response[ResearchStarted]:
        gw = caller.gateway
        digest = caller.idempotency_digest()
        if (stored := await gw.recall(digest)) is not None:
            return stored_response(stored)
        check_notification_config(data.notification_config)
        await caller.check_agent(agent=data.agent, internal=True)
        cmd = StartResearch(**msgspec.structs.asdict(data), job_id=gw.make_id(digest, "research"))
        view = await caller.ask(RESEARCH, "start", cmd, ResearchView)
        secret = view.notification_secret if cmd.notification_config is not None else None
        started = ResearchStarted(**msgspec.structs.asdict(view.job), notification_secret=shown_once(secret))
        stored = Stored(status=202, body=full_json(started))
        await gw.remember(digest, stored)
        return stored_response(stored)

    @get("/", summary="List the research jobs, newest first (filter by status; page with `after`)")
    async def list_jobs(
        self, caller: Caller, status: FromQuery[ResearchStatus | None] = None, limit: Limit = 50, after: After = None
    ) -> ResearchPage:
        query = ListResearch(limit=limit, after=keyset(after), status=status)
        listed = await caller.ask(RESEARCH, "list_research", query, ResearchList)
        return ResearchPage(jobs=listed.jobs, next_after=cursor(listed.next_after))

    @get("/{job_id:str}", summary="A research job: status, stopped_by, sub-runs, totals, report and citations")
    async def read(self, caller: Caller, job_id: FromPath[str]) -> ResearchJob:
        return await _job(caller, job_id)

    @get(
        "/{job_id:str}/report",
        media_type="text/markdown; charset=utf-8",
        summary="The job's report as Markdown (409 until the job has ended)",
    )
    async def report(self, caller: Caller, job_id: FromPath[str]) -> str:
        job = await _job(caller, job_id)
        if job.report is None:
            raise ApiError(ErrorCode.CONFLICT, f"research job {job.id} is {job.status.value}: no report yet")
        return job.report

    @get(
        "/{job_id:str}/events",
        media_type="text/event-stream",
        summary="The job's progress as server-sent events; Last-Event-ID resumes after it",
    )
    async def events(self, request: Request[Any, Any, Any], caller: Caller, job_id: FromPath[str]) -> Stream:
        last = request.headers.get("last-event-id", "0").strip() or "0"
        if not last.isdigit():
            raise ApiError(ErrorCode.INVALID, "Last-Event-ID must be an event id this stream sent")
        job = await _job(caller, job_id)
        events = caller.gateway.bus.replay(
            RESEARCH_EVT.name,
            subjects.research_job_events(caller.tenant, job.id),
            ResearchEvent,
            after_seq=int(last),
            until=lambda event: isinstance(event, ResearchFinished),
        )
        return sse_response(events, slot=caller.gateway.streams.take(caller.tenant))

    @post("/{job_id:str}/cancel", status_code=202, summary="Cancel a job: it stops, and so does every sub-run")
    async def cancel(self, caller: Caller, job_id: FromPath[str]) -> ResearchJob:
        return (await caller.ask(RESEARCH, "cancel_research", CancelResearch(job_id=ident(job_id)), ResearchView)).job

    @get("/{job_id:str}/deliveries", summary="The deliveries of the job's result: channel, status, attempts")
    async def deliveries(self, caller: Caller, job_id: FromPath[str]) -> DeliveryPage:
        return DeliveryPage(deliveries=(await _deliveries(caller, job_id)).deliveries)

    @post(
        "/{job_id:str}/deliveries/{delivery_id:str}/retry",
        status_code=202,
        summary="Send a failed delivery of the job's result again (409 unless it failed)",
    )
    async def retry_delivery(self, caller: Caller, job_id: FromPath[str], delivery_id: FromPath[str]) -> DeliveryRecord:
        listed = await _deliveries(caller, job_id)
        if delivery_id not in {d.id for d in listed.deliveries}:
            raise ApiError(ErrorCode.NOT_FOUND, f"no delivery {delivery_id[:80]!r} of research job {job_id}")
        view = await caller.ask(NOTIFIER, "retry", RetryDelivery(delivery_id=delivery_id), DeliveryView)
        return view.delivery
