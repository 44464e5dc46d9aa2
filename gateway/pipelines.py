"""POST /v1/pipelines/{name}/runs: a pipeline over a text, answered with each step's typed result.

The run is an executor run of agent `pipeline:<name>`; its steps are sub-runs (see
`GET /v1/runs/{id}/tree`). Built in: `text-analysis` (summary, sentiment, entities).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, assert_never

import msgspec
from litestar import Request, Response, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody

from bus.runs import RunClient
from gateway.auth import Tenant
from gateway.errors import HTTP_STATUS, ApiError
from gateway.state import Stored, gateway_of, ident
from gateway.views import full
from schemas.errors import ErrorCode
from schemas.runs import PipelineMode, PipelineOutput, RunCancelled, RunCompleted, RunEnd, RunFailed, RunRequest

__all__ = ["run_pipeline"]


class PipelineRun(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=200_000)]
    mode: PipelineMode | None = None  # default: the pipeline's own


@post("/v1/pipelines/{name:str}/runs", status_code=200, tags=["pipelines"], summary="Run a pipeline over a text")
async def run_pipeline(
    request: Request[Any, Any, Any], state: State, tenant: Tenant, name: FromPath[str], data: JSONBody[PipelineRun]
) -> Response[Any]:
    gw = gateway_of(state)
    digest = gw.idempotency_digest(request, tenant)
    if (stored := await gw.recall(digest)) is not None:
        return Response(stored.body, status_code=stored.status, media_type="application/json")
    run_id = gw.make_id(digest, "run")
    run = RunRequest(
        run_id=run_id,
        agent=f"pipeline:{ident(name)}",
        prompt=data.text,
        metadata={"mode": data.mode.value} if data.mode else {},
    )
    try:
        end = await asyncio.wait_for(RunClient(gw.bus).run(run, gw.trace(tenant, request)), gw.config.reply_timeout_s)
    except TimeoutError:
        raise ApiError(ErrorCode.TIMEOUT, "the pipeline did not finish in time", {"run_id": run_id}) from None
    status, body = _answer(run_id, end)
    encoded = msgspec.json.encode(body)
    await gw.remember(digest, Stored(status=status, body=encoded))
    return Response(encoded, status_code=status, media_type="application/json")


def _answer(run_id: str, end: RunEnd) -> tuple[int, dict[str, Any]]:
    """The HTTP status and body of a pipeline run's end: each step's typed result, or the error."""
    match end:
        case RunCompleted():
            output = msgspec.json.decode(end.output, type=PipelineOutput)
            return 200, {"run_id": run_id, **full(output), "usage": full(end.usage)}
        case RunFailed():
            error = {
                "code": end.error.code,
                "message": end.error.message,
                "details": {**end.error.details, "run_id": run_id},
            }
            return HTTP_STATUS[end.error.code], {"error": error}
        case RunCancelled():
            error = {"code": "conflict", "message": "the pipeline run was cancelled", "details": {"run_id": run_id}}
            return 409, {"error": error}
        case _:
            assert_never(end)
