"""/v1/approvals: the tool calls waiting for a person (the executor's, schemas/approvals.py), and deciding one.

A decision is the caller's: `decided_by` is the request's API key id, never something the body says. It is
answered with the decided approval, kept under an Idempotency-Key like every POST that changes state, and
noted in the audit trail as `decided` with what was shown (the tool, its arguments' SHA-256) and what was
decided (gateway/audit_trail.py).
"""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec
from litestar import Controller, Response, get, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from bus import subjects
from gateway.answers import ApprovalPage
from gateway.caller import Caller
from gateway.errors import ApiError
from gateway.state import Stored, ident, stored_response
from gateway.views import full_json
from schemas.approvals import (
    Approval,
    ApprovalList,
    ApprovalStatus,
    ApprovalView,
    DecideApproval,
    Decision,
    GetApproval,
    ListApprovals,
)
from schemas.errors import ErrorCode

__all__ = ["ApprovalController", "DecisionBody", "StatusFilter"]

EXECUTOR = subjects.ActorName.EXECUTOR
MAX_REASON = 2000
RunFilter = Annotated[str | None, QueryParameter(min_length=1, max_length=200, description="only this run's")]


class StatusFilter(enum.StrEnum):
    """An approval status, or `all` of them."""

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EDITED = "edited"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"
    ALL = "all"


class DecisionBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of `POST /v1/approvals/{id}`: `edit` runs the tool with `arguments` in place of the model's."""

    decision: Decision
    reason: Annotated[str, msgspec.Meta(max_length=MAX_REASON)] | None = None  # a denial's: what the model sees
    arguments: dict[str, object] | None = None


class ApprovalController(Controller):
    path = "/v1/approvals"
    tags = ["approvals"]

    @get("/", summary="The tool calls waiting for approval (or decided: filter by status and run), newest first")
    async def list_approvals(
        self,
        caller: Caller,
        status: FromQuery[StatusFilter] = StatusFilter.PENDING,
        run_id: RunFilter = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200, description="at most this many (default 100)")] = 100,
    ) -> ApprovalPage:
        query = ListApprovals(
            status=None if status is StatusFilter.ALL else ApprovalStatus(status.value),
            run_id=None if run_id is None else ident(run_id),
            limit=limit,
        )
        listed = await caller.ask(EXECUTOR, "list_approvals", query, ApprovalList)
        return ApprovalPage(approvals=listed.approvals)

    @get("/{approval_id:str}", summary="An approval: the tool call as the model made it, and its decision")
    async def read(self, caller: Caller, approval_id: FromPath[str]) -> Approval:
        query = GetApproval(approval_id=ident(approval_id))
        return (await caller.ask(EXECUTOR, "get_approval", query, ApprovalView)).approval

    @post(
        "/{approval_id:str}",
        status_code=200,
        summary="Decide a tool call: approve it, deny it (the reason is what the model sees), or edit its arguments",
    )
    async def decide(
        self, caller: Caller, approval_id: FromPath[str], data: JSONBody[DecisionBody]
    ) -> Response[Approval]:
        approval_id = ident(approval_id)
        if data.decision is Decision.EDIT and data.arguments is None:
            raise ApiError(ErrorCode.INVALID, "an `edit` needs `arguments`: the arguments to run the tool with")
        if data.decision is not Decision.EDIT and data.arguments is not None:
            raise ApiError(ErrorCode.INVALID, "only an `edit` takes `arguments`")
        gw = caller.gateway
        digest = caller.idempotency_digest()
        if (stored := await gw.recall(digest)) is not None:
            return stored_response(stored, replayed=True)
        decide = DecideApproval(
            approval_id=approval_id,
            decision=data.decision,
            reason=data.reason,
            arguments=data.arguments,
            decided_by=caller.key_id,
        )
        view = await caller.ask(EXECUTOR, "decide_approval", decide, ApprovalView)
        stored = Stored(status=200, body=full_json(view.approval))
        await gw.remember(digest, stored)
        return stored_response(stored)
