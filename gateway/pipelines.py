"""POST /v1/pipelines/{name}/runs: a pipeline over a text, answered with each step's typed result.

The run is an executor run of agent `pipeline:<name>`; its steps are sub-runs (see
`GET /v1/runs/{id}/tree`). Built in: `text-analysis` (summary, sentiment, entities).
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Response, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody

from bus import subjects
from bus.streams import EXECUTOR_EVT
from gateway.auth import Tenant
from gateway.errors import HTTP_STATUS, ApiError
from gateway.state import Stored, gateway_of, ident
from gateway.views import full
from schemas.errors import ErrorCode
from schemas.runs import RunCompleted, RunFailed, RunFinished, RunRequest

__all__ = ["run_pipeline"]


class PipelineRun(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=200_000)]
    mode: Literal["sequential", "parallel"] | None = None  # default: the pipeline's own


@post("/v1/pipelines/{name:str}/runs", status_code=200, tags=["pipelines"], summary="Run a pipeline over a text")
async def run_pipeline(
    request: Request[Any, Any, Any], state: State, tenant: Tenant, name: FromPath[str], data: JSONBody[PipelineRun]
) -> Response[Any]:
    gw = gateway_of(state)
    digest = gw.idempotency_digest(request, tenant)
    if (stored := await gw.recall(digest)) is not None:
        return Response(stored.body, status_code=stored.status, media_type="application/json")
    run_id = gw.make_id(digest, "run")
    trace = gw.trace(tenant, request).child(run_id=run_id)
    finished = aiter(gw.bus.replay(EXECUTOR_EVT.name, subjects.executor_finished(tenant, run_id), RunFinished))
    run = RunRequest(
        run_id=run_id,
        agent=f"pipeline:{ident(name)}",
        prompt=data.text,
        metadata={"mode": data.mode} if data.mode else {},
    )
    try:
        await gw.bus.publish(subjects.executor_command(tenant, run_id), run, trace=trace, msg_id=run_id)
        result = (await asyncio.wait_for(anext(finished), gw.config.reply_timeout_s)).body.result
    except TimeoutError:
        raise ApiError(ErrorCode.TIMEOUT, "the pipeline did not finish in time", {"run_id": run_id}) from None
    finally:
        await finished.aclose()  # type: ignore[attr-defined]
    if isinstance(result, RunCompleted):
        status, body = 200, {"run_id": run_id, **json.loads(result.output), "usage": full(result.usage)}
    elif isinstance(result, RunFailed):
        details = {**result.error.details, "run_id": run_id}
        status = HTTP_STATUS[result.error.code]
        body = {"error": {"code": result.error.code, "message": result.error.message, "details": details}}
    else:
        status, body = (
            409,
            {"error": {"code": "conflict", "message": "the pipeline run was cancelled", "details": {"run_id": run_id}}},
        )
    encoded = msgspec.json.encode(body)
    await gw.remember(digest, Stored(status=status, body=encoded))
    return Response(encoded, status_code=status, media_type="application/json")
