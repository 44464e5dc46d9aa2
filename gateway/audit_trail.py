"""The audit trail, written in one place: Litestar's `before_send` hook `audit_response` notes every
answered change (a POST, PUT, PATCH or DELETE under `/v1` with a status below 400, made with a key) and
`AuditTrail` publishes the notes to the audit stream (bus/audit.py) from its own task, so a request
never waits on the write.

The action follows from the method (POST created, PUT/PATCH changed, DELETE deleted), except for the
routes named in ACTIONS (starting something is `executed`; a key deleted is `revoked`). The target is
the id the answer names (`run_id`, else `id`), else the path's last id. A decision on an approval
(`decided`) targets the approval, and its `detail` keeps what was shown (the run, the tool, the SHA-256 of
the arguments the model wrote) and what was decided (the status, a denial's reason, an edit's arguments),
as the answer (the decided approval) says.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec
import structlog

from bus import audit
from bus.client import Bus
from bus.errors import BusError
from gateway.auth import PRINCIPAL
from schemas.audit import AuditAction, AuditEvent

__all__ = ["ACTIONS", "UNAUDITED", "AuditTrail", "audit_response"]

log = structlog.get_logger("gateway")
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
QUEUE_MAX = 10_000
_PENDING = "agentbus.audit"  # key of the scope state: the event waiting for its response's body

ACTIONS: dict[tuple[str, str], AuditAction] = {
    ("POST", "/v1/conversations/{conversation_id}/messages"): AuditAction.EXECUTED,
    ("POST", "/v1/conversations/{conversation_id}/continue"): AuditAction.EXECUTED,
    ("POST", "/v1/tasks/{task_id}/execute"): AuditAction.EXECUTED,
    ("POST", "/v1/pipelines/{name}/runs"): AuditAction.EXECUTED,
    ("POST", "/v1/research"): AuditAction.EXECUTED,
    ("POST", "/v1/tools/{name}/call"): AuditAction.EXECUTED,
    ("POST", "/v1/task-runs/{task_run_id}/deliveries/{delivery_id}/retry"): AuditAction.EXECUTED,
    ("POST", "/v1/research/{job_id}/deliveries/{delivery_id}/retry"): AuditAction.EXECUTED,
    ("POST", "/v1/dead-letters/{dead_letter_id}/replay"): AuditAction.EXECUTED,
    ("POST", "/v1/runs/{run_id}/cancel"): AuditAction.CHANGED,
    ("POST", "/v1/research/{job_id}/cancel"): AuditAction.CHANGED,
    ("POST", "/v1/tasks/{task_id}/enable"): AuditAction.CHANGED,
    ("POST", "/v1/tasks/{task_id}/disable"): AuditAction.CHANGED,
    ("DELETE", "/v1/keys/{key_id}"): AuditAction.REVOKED,
    ("POST", "/v1/keys/{key_id}/rotate"): AuditAction.ROTATED,
    ("POST", "/v1/approvals/{approval_id}"): AuditAction.DECIDED,
}
UNAUDITED = frozenset({("POST", "/v1/ws-tokens")})  # a token for one WebSocket changes nothing


class _Ids(msgspec.Struct):
    id: str | None = None
    run_id: str | None = None


_ids = msgspec.json.Decoder(_Ids)


class _Decided(msgspec.Struct):
    """What a decided approval (schemas/approvals.py `Approval`) tells the audit trail."""

    run_id: str = ""
    tool_name: str = ""
    args_sha256: str = ""
    status: str = ""
    reason: str | None = None
    edited_args: str | None = None


_decided = msgspec.json.Decoder(_Decided)


def _decision(body: bytes) -> dict[str, str]:
    said = _decided.decode(body)
    detail = {"run_id": said.run_id, "tool": said.tool_name, "args_sha256": said.args_sha256, "status": said.status}
    if said.reason is not None:
        detail["reason"] = said.reason
    if said.edited_args is not None:
        detail["edited_args"] = said.edited_args
    return detail


class AuditTrail:
    """Publishes audit events in the background; `stop` drains what is queued."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._queue: asyncio.Queue[AuditEvent] = asyncio.Queue(QUEUE_MAX)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._write())

    def note(self, event: AuditEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            log.error("audit queue full: event dropped", tenant=event.tenant, key_id=event.key_id, path=event.path)

    async def _write(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < 256:
                batch.append(self._queue.get_nowait())
            results = await asyncio.gather(*(audit.record(self.bus, e) for e in batch), return_exceptions=True)
            for event, result in zip(batch, results, strict=True):
                if isinstance(result, BusError | OSError | TimeoutError):
                    log.error("audit event not written", tenant=event.tenant, path=event.path, error=str(result))
                elif isinstance(result, BaseException):
                    raise result
            for _ in batch:
                self._queue.task_done()

    async def stop(self) -> None:
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout=5.0)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def _action(method: str, route: str) -> AuditAction | None:
    if method not in MUTATING or not route.startswith("/v1/") or (method, route) in UNAUDITED:
        return None
    said = ACTIONS.get((method, route))
    if said is not None:
        return said
    return {"POST": AuditAction.CREATED, "DELETE": AuditAction.DELETED}.get(method, AuditAction.CHANGED)


async def audit_response(message: Any, scope: Any) -> None:
    """Litestar `before_send`: note a change once its answer is known to succeed."""
    state = scope["state"]
    if message["type"] == "http.response.start":
        principal = state.get(PRINCIPAL)
        route = scope.get("path_template") or ""
        action = _action(scope.get("method", ""), route)
        if principal is None or action is None or message["status"] >= 400:
            return
        params = scope.get("path_params") or {}
        state[_PENDING] = AuditEvent(
            at=time.time(),
            tenant=principal.tenant,
            key_id=principal.key_id,
            action=action,
            method=scope["method"],
            route=route,
            path=scope["path"],
            target=str(list(params.values())[-1]) if params else "",
            status=message["status"],
            correlation_id=state.get("agentbus.correlation_id", ""),
        )
    elif message["type"] == "http.response.body" and (event := state.pop(_PENDING, None)) is not None:
        body = message.get("body", b"")
        if body[:1] == b"{" and not message.get("more_body") and event.action is AuditAction.DECIDED:
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                event = msgspec.structs.replace(event, detail=_decision(body))
        elif body[:1] == b"{" and not message.get("more_body"):
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                ids = _ids.decode(body)
                if ids.run_id or ids.id:
                    event = msgspec.structs.replace(event, target=ids.run_id or ids.id or event.target)
        scope["app"].state.gateway.audit.note(event)
