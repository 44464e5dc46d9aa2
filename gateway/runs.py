"""/v1/runs: the list, a run's record, its tree, its output as resumable SSE, steering it and cancelling it
(the executor's)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.response import Stream

from bus import subjects
from bus.headers import new_id
from bus.runs import RunClient
from gateway.answers import RunAnswer, RunPage, RunTreeNode
from gateway.bodies import SteerBody
from gateway.caller import Caller
from gateway.cursors import After, Limit, cursor, keyset
from gateway.errors import ApiError
from gateway.sse import sse_response
from gateway.state import ident
from gateway.views import full, full_json
from schemas.approvals import Steered, SteerRun
from schemas.errors import ErrorCode
from schemas.runs import GetRun, GetRunTree, ListRuns, RunList, RunNode, RunRecord, RunStatus, RunTree, RunView

__all__ = ["RunController"]

EXECUTOR = subjects.ActorName.EXECUTOR
AgentFilter = Annotated[str | None, QueryParameter(pattern=r"^[A-Za-z0-9_.:-]{1,100}$")]
IdFilter = Annotated[str | None, QueryParameter(min_length=1, max_length=200)]


def _answer(view: RunView) -> RunAnswer:
    return RunAnswer(**msgspec.structs.asdict(view.run), total_usage=view.total_usage or view.run.usage)


async def _record(caller: Caller, run_id: str) -> RunRecord:
    """The executor's record (`queued` for a turn waiting behind another); 404 if it knows no such run."""
    record = await RunClient(caller.gateway.bus).record(run_id, caller.trace)
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

    @get("/", summary="List the runs, newest first (filter by status, agent, task, conversation, parent)")
    async def list_runs(
        self,
        caller: Caller,
        status: FromQuery[RunStatus | None] = None,
        agent: AgentFilter = None,
        task_id: IdFilter = None,
        conversation_id: IdFilter = None,
        parent_run_id: IdFilter = None,
        limit: Limit = 50,
        after: After = None,
    ) -> RunPage:
        query = ListRuns(
            limit=limit,
            after=keyset(after),
            status=status,
            agent=agent,
            task_id=task_id,
            conversation_id=conversation_id,
            parent_run_id=parent_run_id,
        )
        listed = await caller.ask(EXECUTOR, "list_runs", query, RunList)
        return RunPage(runs=[_answer(v) for v in listed.runs], next_after=cursor(listed.next_after))

    @get("/{run_id:str}", summary="A run: status, model, timings, usage and cost (its own, and with its sub-runs')")
    async def read(self, caller: Caller, run_id: FromPath[str]) -> RunAnswer:
        return _answer(await caller.ask(EXECUTOR, "get_run", GetRun(run_id=ident(run_id), with_total=True), RunView))

    @get(
        "/{run_id:str}/tree",
        summary="The run (or research job) and every run started under it, as a tree",
        # a node is the run's fields flattened beside its kind and children: no one Struct says that
        responses={200: ResponseSpec(RunTreeNode, description="the tree's root")},
    )
    async def tree(self, caller: Caller, run_id: FromPath[str]) -> Response[bytes]:
        query = GetRunTree(run_id=ident(run_id))
        found = await caller.ask(EXECUTOR, "tree", query, RunTree)
        if found.root is None:
            raise ApiError(ErrorCode.NOT_FOUND, f"no run {query.run_id}")
        return Response(full_json(_node_json(found.root)), media_type="application/json")

    @get(
        "/{run_id:str}/events",
        media_type="text/event-stream",
        summary="The run's output as server-sent events; Last-Event-ID resumes after it",
    )
    async def events(self, request: Request[Any, Any, Any], caller: Caller, run_id: FromPath[str]) -> Stream:
        run_id = ident(run_id)
        last = request.headers.get("last-event-id", "0").strip() or "0"
        if not last.isdigit():
            raise ApiError(ErrorCode.INVALID, "Last-Event-ID must be an event id this stream sent")
        await _record(caller, run_id)  # 404 unless the executor knows it
        slot = caller.gateway.streams.take(caller.tenant)
        return sse_response(caller.gateway.run_output(caller.tenant, run_id, after_seq=int(last)), slot=slot)

    @post(
        "/{run_id:str}/messages",
        status_code=202,
        summary="Steer a running turn: a user message the agent sees at its next model request (once per message_id)",
    )
    async def steer(self, caller: Caller, run_id: FromPath[str], data: JSONBody[SteerBody]) -> Steered:
        command = SteerRun(run_id=ident(run_id), content=data.content, message_id=data.message_id or new_id())
        return await caller.ask(EXECUTOR, "steer", command, Steered)

    @post("/{run_id:str}/cancel", status_code=202, summary="Cancel a run: the model call and its tools stop")
    async def cancel(self, caller: Caller, run_id: FromPath[str]) -> RunRecord:
        run_id = ident(run_id)
        await _record(caller, run_id)  # the executor would keep a tombstone for an unknown id
        return await RunClient(caller.gateway.bus).cancel(run_id, caller.trace)
