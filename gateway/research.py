"""/v1/research: start a research job, follow it (SSE), read its report, cancel it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from bus import subjects
from bus.streams import RESEARCH_EVT
from gateway.auth import Tenant
from gateway.errors import ApiError
from gateway.sse import sse_response
from gateway.state import Gateway, Stored, gateway_of, ident
from gateway.views import full, full_json
from schemas.errors import ErrorCode
from schemas.notifier import NotificationConfig
from schemas.research import (
    CancelResearch,
    GetResearch,
    ResearchEvent,
    ResearchFinished,
    ResearchJob,
    ResearchView,
    StartResearch,
)

__all__ = ["ResearchController"]

RESEARCH = subjects.ActorName.RESEARCH
Question = Annotated[str, msgspec.Meta(min_length=1, max_length=10_000)]
Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class Budget(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    max_subruns: Annotated[int, msgspec.Meta(ge=1, le=1000)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_cost_usd: Annotated[float, msgspec.Meta(gt=0)] | None = None


class NewResearch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    question: Question
    agent: Name = "researcher"  # answers each sub-question
    sources: Annotated[list[Literal["documents", "web"]], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["documents"]
    )
    max_subtasks: Annotated[int, msgspec.Meta(ge=1, le=50)] = 8
    max_depth: Annotated[int, msgspec.Meta(ge=1, le=5)] = 2
    budget: Budget = Budget()
    deadline_seconds: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 1800.0
    notification_config: NotificationConfig | None = None


async def _job(gw: Gateway, request: Request[Any, Any, Any], tenant: str, job_id: str) -> ResearchJob:
    view = await gw.bus.request(
        subjects.service(RESEARCH, "get_research"),
        GetResearch(job_id=ident(job_id)),
        ResearchView,
        trace=gw.trace(tenant, request),
    )
    return view.job


class ResearchController(Controller):
    path = "/v1/research"
    tags = ["research"]

    @post("/", status_code=202, summary="Start a research job: plan, fan out over sources, write a cited report")
    async def start(
        self, request: Request[Any, Any, Any], state: State, tenant: Tenant, data: JSONBody[NewResearch]
    ) -> Response[Any]:
        gw = gateway_of(state)
        digest = gw.idempotency_digest(request, tenant)
        if (stored := await gw.recall(digest)) is not None:
            return Response(stored.body, status_code=stored.status, media_type="application/json")
        fields = {**msgspec.to_builtins(data), "job_id": gw.make_id(digest, "research")}
        cmd = msgspec.convert(fields, StartResearch)
        view = await gw.bus.request(
            subjects.service(RESEARCH, "start"), cmd, ResearchView, trace=gw.trace(tenant, request)
        )
        body: dict[str, Any] = full(view.job)
        if view.notification_secret is not None and cmd.notification_config is not None:
            body["notification_secret"] = view.notification_secret  # shown once: verifies the job's webhook
        encoded = msgspec.json.encode(body)
        await gw.remember(digest, Stored(status=202, body=encoded))
        return Response(encoded, status_code=202, media_type="application/json")

    @get("/{job_id:str}", summary="A research job: status, stopped_by, sub-runs, totals, report and citations")
    async def read(
        self, request: Request[Any, Any, Any], state: State, tenant: Tenant, job_id: FromPath[str]
    ) -> Response[Any]:
        job = await _job(gateway_of(state), request, tenant, job_id)
        return Response(full_json(job), media_type="application/json")

    @get("/{job_id:str}/report", summary="The job's report as Markdown (409 until the job has ended)")
    async def report(
        self, request: Request[Any, Any, Any], state: State, tenant: Tenant, job_id: FromPath[str]
    ) -> Response[Any]:
        job = await _job(gateway_of(state), request, tenant, job_id)
        if job.report is None:
            raise ApiError(ErrorCode.CONFLICT, f"research job {job.id} is {job.status.value}: no report yet")
        return Response(job.report, media_type="text/markdown; charset=utf-8")

    @get("/{job_id:str}/events", summary="The job's progress as server-sent events; Last-Event-ID resumes after it")
    async def events(
        self, request: Request[Any, Any, Any], state: State, tenant: Tenant, job_id: FromPath[str]
    ) -> Stream:
        gw = gateway_of(state)
        last = request.headers.get("last-event-id", "0").strip() or "0"
        if not last.isdigit():
            raise ApiError(ErrorCode.INVALID, "Last-Event-ID must be an event id this stream sent")
        job = await _job(gw, request, tenant, job_id)  # 404 for an unknown (or another tenant's) job
        events = gw.bus.replay(
            RESEARCH_EVT.name,
            subjects.research_job_events(tenant, job.id),
            ResearchEvent,
            after_seq=int(last),
            until=lambda event: isinstance(event, ResearchFinished),
        )
        return sse_response(events)

    @post("/{job_id:str}/cancel", status_code=202, summary="Cancel a job: it stops, and so does every sub-run")
    async def cancel(
        self, request: Request[Any, Any, Any], state: State, tenant: Tenant, job_id: FromPath[str]
    ) -> Response[Any]:
        gw = gateway_of(state)
        view = await gw.bus.request(
            subjects.service(RESEARCH, "cancel_research"),
            CancelResearch(job_id=ident(job_id)),
            ResearchView,
            trace=gw.trace(tenant, request),
        )
        return Response(full_json(view.job), status_code=202, media_type="application/json")
