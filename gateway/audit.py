"""GET /v1/audit: the tenant's audit log (admin scope), oldest first, a page at a time (`after`), from `since`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, get
from litestar.params import FromQuery, QueryParameter

from bus import audit
from bus.keys import Scope
from gateway.auth import principal_of
from gateway.state import gateway_of
from schemas.audit import AuditAction

__all__ = ["read_audit"]


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    id: int  # the stream sequence: pass it as `after` to read what came later
    at: datetime
    key_id: str  # who: the key's public id (`cli`: the agentbus command)
    action: AuditAction
    method: str
    route: str
    path: str
    target: str  # what: the id acted on or created
    status: int
    correlation_id: str
    detail: dict[str, str]  # a decision's: the run, tool and argument hash shown, the status and reason decided


class AuditPage(msgspec.Struct, frozen=True, kw_only=True):
    events: list[AuditEntry]
    next_after: int | None  # more are stored after this page: pass it as `after`


@get("/v1/audit", opt={"scope": Scope.ADMIN.value}, summary="Who (key id) changed what, and when", tags=["keys"])
async def read_audit(
    request: Request[Any, Any, Any],
    after: Annotated[int | None, QueryParameter(ge=0, le=2**63 - 1)] = None,
    since: FromQuery[datetime | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=audit.MAX_PAGE)] = 100,
) -> AuditPage:
    principal = principal_of(request)
    start = None if since is None else (since if since.tzinfo else since.replace(tzinfo=UTC)).timestamp()
    page = await audit.read(
        gateway_of(request.app.state).bus, principal.tenant, after_seq=after or 0, since=start, limit=limit
    )
    events = [
        AuditEntry(
            id=seq,
            at=datetime.fromtimestamp(e.at, UTC),
            key_id=e.key_id,
            action=e.action,
            method=e.method,
            route=e.route,
            path=e.path,
            target=e.target,
            status=e.status,
            correlation_id=e.correlation_id,
            detail=e.detail,
        )
        for seq, e in page.events
    ]
    return AuditPage(events=events, next_after=events[-1].id if page.more and events else None)
