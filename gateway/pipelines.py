"""POST /v1/pipelines/{name}/runs: a pipeline over a text, answered with each step's typed result.

The run is an executor run of agent `pipeline:<name>`; its steps are sub-runs (see
`GET /v1/runs/{id}/tree`). Built in: `text-analysis` (summary, sentiment, entities).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, assert_never

import msgspec
from litestar import Response, post
from litestar.params import FromPath, JSONBody

from bus.runs import RunClient
from gateway.answers import PipelineAnswer
from gateway.caller import Caller
from gateway.errors import HTTP_STATUS, ApiError, error_json
from gateway.state import Stored, ident, stored_response
from gateway.views import full_json
from schemas.errors import ErrorCode
from schemas.runs import PipelineMode, PipelineOutput, RunCancelled, RunCompleted, RunEnd, RunFailed, RunRequest

__all__ = ["run_pipeline"]


class PipelineRun(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=200_000)]
    mode: PipelineMode | None = None  # default: the pipeline's own


@post("/v1/pipelines/{name:str}/runs", status_code=200, tags=["pipelines"], summary="Run a pipeline over a text")
async def run_pipeline(caller: Caller, name: FromPath[str], data: JSONBody[PipelineRun]) -> Response[PipelineAnswer]:
    gw = caller.gateway
    digest = caller.idempotency_digest()
    if (stored := await gw.recall(digest)) is not None:
        return stored_response(stored)
    await caller.check_agent(pipeline=ident(name))
    run_id = gw.make_id(digest, "run")
    run = RunRequest(
        run_id=run_id,
        agent=f"pipeline:{ident(name)}",
        prompt=data.text,
        metadata={"mode": data.mode.value} if data.mode else {},
    )
    try:
        end = await asyncio.wait_for(RunClient(gw.bus).run(run, caller.trace), gw.config.reply_timeout_s)
    except TimeoutError:
        raise ApiError(ErrorCode.TIMEOUT, "the pipeline did not finish in time", {"run_id": run_id}) from None
    stored = _answer(run_id, end)
    await gw.remember(digest, stored)
    return stored_response(stored)


def _answer(run_id: str, end: RunEnd) -> Stored:
    """The status and body of a pipeline run's end: each step's typed result, or the error."""
    match end:
        case RunCompleted():
            output = msgspec.json.decode(end.output, type=PipelineOutput)
            answer = PipelineAnswer(**msgspec.structs.asdict(output), run_id=run_id, usage=end.usage)
            return Stored(status=200, body=full_json(answer))
        case RunFailed():
            error = error_json(end.error.code, end.error.message, {**end.error.details, "run_id": run_id})
            return Stored(status=HTTP_STATUS[end.error.code], body=error)
        case RunCancelled():
            error = error_json(ErrorCode.CONFLICT, "the pipeline run was cancelled", {"run_id": run_id})
            return Stored(status=HTTP_STATUS[ErrorCode.CONFLICT], body=error)
        case _:
            assert_never(end)
