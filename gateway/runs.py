"""/v1/runs: a run's record, its output as resumable SSE, and cancelling it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.params import FromPath
from litestar.response import Stream

from bus import subjects
from bus.errors import BusError
from gateway.auth import Tenant
from gateway.errors import ApiError
from gateway.sse import sse_response
from gateway.state import Gateway, gateway_of, ident
from gateway.views import full, full_json
from schemas.errors import ErrorCode
from schemas.runs import CancelRun, GetRun, GetRunTree, RunRecord, RunStatus, RunTree, RunView

__all__ = ["RunController"]

EXECUTOR = subjects.ActorName.EXECUTOR


async def _record(gw: Gateway, request: Request[Any, Any, Any], tenant: str, run_id: str) -> RunRecord:
    """The executor's record; a turn still queued behind another has output but no record yet."""
    try:
        view = await gw.bus.request(
            subjects.service(EXECUTOR, "get_run"), GetRun(run_id=run_id), RunView, trace=gw.trace(tenant, request)
        )
    except BusError as e:
        if e.code is not ErrorCode.NOT_FOUND or not await gw.run_has_output(tenant, run_id):
            raise
        return RunRecord(
            id=run_id, tenant=tenant, agent="", model="", status=RunStatus.QUEUED, created_at=datetime.now(UTC)
        )
    return view.run


class RunController(Controller):
    path = "/v1/runs"
    tags = ["runs"]

    @get("/{run_id:str}", summary="A run: status, model, timings, token usage and cost")
    async def read(
        self, request: Request[Any, Any, Any], state: State, tenant: Tenant, run_id: FromPath[str]
    ) -> Response[Any]:
        gw = gateway_of(state)
        record = await _record(gw, request, tenant, ident(run_id))
        return Response(full_json(record), media_type="application/json")

    @get("/{run_id:str}/tree", summary="The run (or research job) and every run started under it, as a tree")
    async def tree(
        self, request: Request[Any, Any, Any], state: State, tenant: Tenant, run_id: FromPath[str]
    ) -> Response[Any]:
        gw = gateway_of(state)
        query = GetRunTree(run_id=ident(run_id))
        found = await gw.bus.request(
            subjects.service(EXECUTOR, "tree"), query, RunTree, trace=gw.trace(tenant, request)
        )
        nodes = {r.id: {**full(r), "children": []} for r in found.runs}
        # a research job is no run itself: its node holds just its id and its sub-runs
        root = nodes.get(query.run_id) or {"id": query.run_id, "kind": "research_job", "children": []}
        for record in found.runs:
            parent = root if record.parent_run_id == query.run_id else nodes.get(record.parent_run_id or "")
            if parent is not None and record.id != query.run_id:
                parent["children"].append(nodes[record.id])
        return Response(full_json(root), media_type="application/json")

    @get("/{run_id:str}/events", summary="The run's output as server-sent events; Last-Event-ID resumes after it")
    async def events(
        self, request: Request[Any, Any, Any], state: State, tenant: Tenant, run_id: FromPath[str]
    ) -> Stream:
        gw = gateway_of(state)
        run_id = ident(run_id)
        last = request.headers.get("last-event-id", "0").strip() or "0"
        if not last.isdigit():
            raise ApiError(ErrorCode.INVALID, "Last-Event-ID must be an event id this stream sent")
        if not await gw.run_has_output(tenant, run_id):
            await _record(gw, request, tenant, run_id)  # 404 unless the executor knows it
        return sse_response(gw.run_output(tenant, run_id, after_seq=int(last)))

    @post("/{run_id:str}/cancel", status_code=202, summary="Cancel a run: the model call and its tools stop")
    async def cancel(
        self, request: Request[Any, Any, Any], state: State, tenant: Tenant, run_id: FromPath[str]
    ) -> Response[Any]:
        gw = gateway_of(state)
        run_id = ident(run_id)
        if not await gw.run_has_output(tenant, run_id):
            await _record(gw, request, tenant, run_id)
        view = await gw.bus.request(
            subjects.service(EXECUTOR, "cancel"), CancelRun(run_id=run_id), RunView, trace=gw.trace(tenant, request)
        )
        return Response(full_json(view.run), status_code=202, media_type="application/json")
