"""`caller: Caller`, the one dependency of a handler: its tenant, this request's trace, and the bus verbs.

The trace carries the correlation id the access log decided for the request (gateway/access_log.py),
so every bus message a request sends names the id its response's X-Correlation-Id names.
"""

from __future__ import annotations

from typing import Any, TypeVar

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency

from bus import subjects
from bus.headers import Trace
from gateway.auth import principal_of
from gateway.state import Gateway, gateway_of
from schemas._base import Message

__all__ = ["WEBHOOK_TENANT", "Caller", "RequestCaller", "provide_caller", "provide_webhook_caller"]

T = TypeVar("T")
WEBHOOK_TENANT = "webhook"  # a signed webhook has no API key: the trigger actor finds its task's tenant


class RequestCaller:
    """A request's tenant and trace, and what it may ask of the bus on the tenant's behalf."""

    def __init__(self, gateway: Gateway, request: Request[Any, Any, Any], tenant: str, key_id: str = "") -> None:
        self.gateway = gateway
        self.tenant = tenant
        self.key_id = key_id  # the public id of the request's API key ("" for a signed webhook)
        self.trace = gateway.trace(tenant, request)
        self._request = request

    async def ask(self, actor: subjects.ActorName, verb: str, message: Message, reply: type[T]) -> T:
        """Request/reply to `actor`'s `verb` (an unhealthy actor's internal failure is a 503)."""
        return await self.gateway.ask(actor, verb, message, reply, self.trace)

    async def publish(self, subject: str, message: Message, *, msg_id: str, trace: Trace | None = None) -> None:
        """Publish to JetStream (deduplicated by `msg_id`) under this request's trace, or a child of it."""
        await self.gateway.bus.publish(subject, message, trace=trace or self.trace, msg_id=msg_id)

    async def check_agent(
        self, *, agent: str | None = None, pipeline: str | None = None, internal: bool = False
    ) -> None:
        """422 unknown_agent unless the agent (and pipeline) named exist (`internal`: a research job's, which may
        name an internal research agent); 403 forbidden if the tenant may not run them."""
        allowed = self.gateway.tenants.get(self.tenant).agents
        await self.gateway.agents.check(self.trace, agent=agent, pipeline=pipeline, allowed=allowed, internal=internal)

    def idempotency_digest(self) -> str | None:
        """The request's Idempotency-Key, digested with its tenant, method and path (None without one)."""
        return self.gateway.idempotency_digest(self._request, self.tenant)


Caller = NamedDependency[RequestCaller]
"""A handler parameter `caller: Caller` is its request's caller (`provide_caller`, or a route's own)."""


async def provide_caller(request: Request[Any, Any, Any], state: State) -> RequestCaller:
    """The caller of a `/v1` request: the tenant of its API key, as the app's guard found it (gateway/auth.py)."""
    principal = principal_of(request)
    return RequestCaller(gateway_of(state), request, principal.tenant, principal.key_id)


async def provide_webhook_caller(request: Request[Any, Any, Any], state: State) -> RequestCaller:
    """The caller of a signed webhook: no API key (the signature, checked by the trigger actor, stands in)."""
    return RequestCaller(gateway_of(state), request, WEBHOOK_TENANT)
