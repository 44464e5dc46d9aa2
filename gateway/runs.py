"""/v1/runs: a run's record, its tree, its output as resumable SSE, and cancelling it — relayed to the executor."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.params import FromPath
from litestar.response import Stream

from bus import subjects
from bus.runs import RunClient
from gateway.auth import Tenant
from gateway.errors import ApiError
from gateway.sse import sse_response
from gateway.state import Gateway, gateway_of, ident
from gateway.views import full, full_json
from schemas.errors import ErrorCode
from schemas.runs import GetRunTree, RunNode, RunRecord, RunTree

__all__ = ["RunController"]

EXECUTOR = subjects.ActorName.EXECUTOR


async def _record(gw: Gateway, request: Request[Any, Any, Any], tenant: str, run_id: str) -> RunRecord:
    """The executor's record (`queued` for a turn waiting behind another); 404 if it knows no such run."""
    record = await RunClient(gw.bus).record(run_id, gw.trace(tenant, request))
    if record is None:
        raise ApiError(ErrorCode.NOT_FOUND, f"no run {run_id}")
    return record


def _node_json(node: RunNode) -> dict[str, Any]:
    """A tree node as HTTP JSON: the run's fields (a research job's node has only its id), its kind, its children."""
    fields = full(node.run) if node.run is not None else {"id": node.id}
    return {**fields, "kind": node.kind, "children": [_node_json(c) for c in node.children]}


class RunController(Controller):
    path = "/v1/runs"
    tags = ["runs"]

    @get("/{run_id:str}", summary="A run: status, model, timings, token usage and cost")
    async def read(
        self, request: Request[Any, Any, Any], state: State, tenant: Tenant, run_id: FromPath[str]
    ) -> Response[Any]:
        record = await _record(gateway_of(state), request, tenant, ident(run_id))
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
        if found.root is None:
            raise ApiError(ErrorCode.NOT_FOUND, f"no run {query.run_id}")
        return Response(full_json(_node_json(found.root)), media_type="application/json")

    @get("/{run_id:str}/events", summary="The run's output as server-sent events; Last-Event-ID resumes after it")
    async def events(
        self, request: Request[Any, Any, Any], state: State, tenant: Tenant, run_id: FromPath[str]
    ) -> Stream:
        gw = gateway_of(state)
        run_id = ident(run_id)
        last = request.headers.get("last-event-id", "0").strip() or "0"
        if not last.isdigit():
            raise ApiError(ErrorCode.INVALID, "Last-Event-ID must be an event id this stream sent")
        await _record(gw, request, tenant, run_id)  # 404 unless the executor knows it
        return sse_response(gw.run_output(tenant, run_id, after_seq=int(last)))

    @post("/{run_id:str}/cancel", status_code=202, summary="Cancel a run: the model call and its tools stop")
    async def cancel(
        self, request: Request[Any, Any, Any], state: State, tenant: Tenant, run_id: FromPath[str]
    ) -> Response[Any]:
        gw = gateway_of(state)
        run_id = ident(run_id)
        await _record(gw, request, tenant, run_id)  # the executor would keep a tombstone for an unknown id
        record = await RunClient(gw.bus).cancel(run_id, gw.trace(tenant, request))
        return Response(full_json(record), status_code=202, media_type="application/json")
