"""/v1/research: start a research job, follow it (SSE), read its report, cancel it, and list or retry the
deliveries of its result (the notifier keeps them under the job's id as their `task_run_id`)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from bus import subjects
from bus.streams import RESEARCH_EVT
from gateway.auth import Tenant
from gateway.checks import check_notification_config
from gateway.errors import ApiError
from gateway.sse import sse_response
from gateway.state import Gateway, Stored, gateway_of, ident
from gateway.views import full, full_json
from schemas.errors import ErrorCode
from schemas.notifier import DeliveryList, DeliveryView, ListDeliveries, RetryDelivery
from schemas.research import (
    CancelResearch,
    GetResearch,
    ResearchEvent,
    ResearchFinished,
    ResearchJob,
    ResearchSpec,
    ResearchView,
    StartResearch,
)

__all__ = ["ResearchController"]

RESEARCH = subjects.ActorName.RESEARCH
NOTIFIER = subjects.ActorName.NOTIFIER


class NewResearch(ResearchSpec, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of `POST /v1/research`: the fields of `StartResearch` but its id."""


async def _job(gw: Gateway, request: Request[Any, Any, Any], tenant: str, job_id: str) -> ResearchJob:
    view = await gw.ask(
        RESEARCH, "get_research", GetResearch(job_id=ident(job_id)), ResearchView, gw.trace(tenant, request)
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
        trace = gw.trace(tenant, request)
        check_notification_config(data.notification_config)
        await gw.agents.check(trace, agent=data.agent)
        cmd = StartResearch(**msgspec.structs.asdict(data), job_id=gw.make_id(digest, "research"))
        view = await gw.ask(RESEARCH, "start", cmd, ResearchView, trace)
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
        cancel = CancelResearch(job_id=ident(job_id))
        view = await gw.ask(RESEARCH, "cancel_research", cancel, ResearchView, gw.trace(tenant, request))
        return Response(full_json(view.job), status_code=202, media_type="application/json")

    @get("/{job_id:str}/deliveries", summary="The deliveries of the job's result: channel, status, attempts")
    async def deliveries(
        self, request: Request[Any, Any, Any], state: State, tenant: Tenant, job_id: FromPath[str]
    ) -> Response[Any]:
        gw = gateway_of(state)
        listed = await _deliveries(gw, request, tenant, job_id)
        return Response(full_json({"deliveries": listed.deliveries}), media_type="application/json")

    @post(
        "/{job_id:str}/deliveries/{delivery_id:str}/retry",
        status_code=202,
        summary="Send a failed delivery of the job's result again (409 unless it failed)",
    )
    async def retry_delivery(
        self,
        request: Request[Any, Any, Any],
        state: State,
        tenant: Tenant,
        job_id: FromPath[str],
        delivery_id: FromPath[str],
    ) -> Response[Any]:
        gw = gateway_of(state)
        listed = await _deliveries(gw, request, tenant, job_id)
        if delivery_id not in {d.id for d in listed.deliveries}:
            raise ApiError(ErrorCode.NOT_FOUND, f"no delivery {delivery_id[:80]!r} of research job {job_id}")
        retry = RetryDelivery(delivery_id=delivery_id)
        view = await gw.ask(NOTIFIER, "retry", retry, DeliveryView, gw.trace(tenant, request))
        return Response(full_json(view.delivery), status_code=202, media_type="application/json")


async def _deliveries(gw: Gateway, request: Request[Any, Any, Any], tenant: str, job_id: str) -> DeliveryList:
    job = await _job(gw, request, tenant, job_id)  # 404 for an unknown (or another tenant's) job
    query = ListDeliveries(task_run_id=job.id)
    return await gw.ask(NOTIFIER, "list_deliveries", query, DeliveryList, gw.trace(tenant, request))
