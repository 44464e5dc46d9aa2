"""Which rate limits a request meets, the RateLimit headers on its answer, and its 429.

Every `/v1` request with an API key is checked, by the app's `before_request` hook (`admit_request`: before
any parameter or body is decoded, so a request that fails to decode counts too), against its key's policy
(`AGENTBUS_RATE_LIMIT` requests per minute; the key named by the SHA-256 digest the key store files it
under, never by the key) and its tenant's (`rate_limit` in the tenant's settings, default
`AGENTBUS_RATE_LIMIT_TENANT`), both at once; a signed webhook against its task's
(`AGENTBUS_WEBHOOK_RATE_LIMIT`). `0` turns a policy off. The mechanism, shared by every replica, is
gateway/gcra.py. (A WebSocket is counted against the `streams` quota, not a rate.)

The decisions are kept in the request's scope state and the `before_send` hook `rate_limit_headers`
writes them on the answer, whatever it is (a 404, a stream's opening, the 429 itself), in the form of
draft-ietf-httpapi-ratelimit-headers: `RateLimit-Policy: "key";q=100;w=60` and
`RateLimit: "key";r=42;t=17` (`r` left, `t` seconds until the quota is whole again), one item per
policy. A refused request is 429 `rate_limited` with `Retry-After`; its other policies still count it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.types import Message, Scope

from bus import subjects
from bus.client import Bus
from bus.tenants import TenantSettingsCache
from gateway.auth import principal_of
from gateway.config import GatewayConfig
from gateway.errors import ApiError
from gateway.gcra import BUCKET, BUCKET_TTL_S, Decision, Policy, RateLimiter
from schemas.errors import ErrorCode

__all__ = ["RateLimits", "admit_request", "rate_limit_headers"]

WEBHOOKS = "/v1/tasks/webhooks/"  # signed, with no API key: limited per task

_POLICIES = "agentbus.ratelimit.policies"  # keys of the scope state
_DECISIONS = "agentbus.ratelimit.decisions"
_RETRY_AFTER = "agentbus.ratelimit.retry_after"


class RateLimits:
    """The gateway's policies over one shared `RateLimiter`."""

    def __init__(self, bus: Bus, config: GatewayConfig, tenants: TenantSettingsCache) -> None:
        self.bus = bus
        self.config = config
        self.tenants = tenants
        self._limiter: RateLimiter | None = None

    async def start(self) -> None:
        kv = await self.bus.key_value(BUCKET, ttl_s=BUCKET_TTL_S, memory=True)  # a NATS restart forgets: fine
        self._limiter = RateLimiter(kv, await self.bus.key_value(BUCKET, leader=True))

    async def admit(self, connection: ASGIConnection[Any, Any, Any, Any], *, key_digest: str, tenant: str) -> None:
        """ApiError(rate_limited) when the key or its tenant is over its rate; the headers either way."""
        checks: list[tuple[Policy, str]] = []
        if self.config.rate_limit > 0:
            checks.append((Policy("key", self.config.rate_limit), f"key.{key_digest}"))
        if (per_tenant := self.tenants.get(tenant).rate_limit) > 0:
            checks.append((Policy("tenant", per_tenant), f"tenant.{tenant}"))
        await self._apply(connection, checks)

    async def admit_webhook(self, connection: ASGIConnection[Any, Any, Any, Any], task_id: str) -> None:
        """ApiError(rate_limited) when the task's webhook is called faster than its rate."""
        if self.config.webhook_rate_limit > 0:
            await self._apply(connection, [(Policy("webhook", self.config.webhook_rate_limit), f"webhook.{task_id}")])

    async def _apply(self, connection: ASGIConnection[Any, Any, Any, Any], checks: list[tuple[Policy, str]]) -> None:
        if not checks or self._limiter is None:
            return
        limiter = self._limiter
        found = await asyncio.gather(*(limiter.check(policy, key) for policy, key in checks))
        decisions = [d for d in found if d is not None]  # None: the store did not answer, let through
        state = connection.scope["state"]
        state[_POLICIES] = [policy for policy, _ in checks]
        state[_DECISIONS] = decisions
        refused = [d for d in decisions if not d.allowed]
        if refused:
            worst = max(refused, key=lambda d: d.retry_after_s)
            state[_RETRY_AFTER] = worst.retry_after_s
            policy = worst.policy
            raise ApiError(
                ErrorCode.RATE_LIMITED,
                f"over the {policy.name}'s rate limit of {policy.quota} requests per {policy.window_s} s: "
                f"retry in {worst.retry_after_s} s",
                {"policy": policy.name, "retry_after_s": str(worst.retry_after_s)},
            )


async def admit_request(request: Request[Any, Any, Any]) -> None:
    """Litestar `before_request`, before any parameter or body is decoded (so a request that fails to decode
    counts too): a `/v1` request's key and tenant, or a webhook's task, against their rates."""
    path = request.url.path
    if not path.startswith("/v1/"):
        return
    gateway = request.app.state.gateway
    if path.startswith(WEBHOOKS):
        with contextlib.suppress(subjects.InvalidToken):  # an id that cannot exist: the route answers 404
            await gateway.rate_limits.admit_webhook(request, subjects.token(path.removeprefix(WEBHOOKS)))
        return
    principal = principal_of(request)  # the app's guard (gateway/auth.py) ran first and found it
    await gateway.rate_limits.admit(request, key_digest=principal.digest or principal.key_id, tenant=principal.tenant)


def _headers(policies: list[Policy], decisions: list[Decision]) -> list[tuple[bytes, bytes]]:
    headers = [(b"ratelimit-policy", ", ".join(p.header() for p in policies).encode())]
    if decisions:
        headers.append((b"ratelimit", ", ".join(d.header() for d in decisions).encode()))
    return headers


async def rate_limit_headers(message: Message, scope: Scope) -> None:
    """Litestar `before_send`: the request's RateLimit-Policy and RateLimit headers (and a 429's Retry-After)."""
    if message["type"] != "http.response.start":
        return
    state = scope["state"]
    policies: list[Policy] | None = state.get(_POLICIES)
    if not policies:
        return
    headers = message.get("headers")
    if not isinstance(headers, list):
        headers = message["headers"] = list(headers or ())
    headers.extend(_headers(policies, state.get(_DECISIONS, [])))
    retry_after = state.get(_RETRY_AFTER)
    if retry_after is not None and message["status"] == 429:
        headers.append((b"retry-after", str(retry_after).encode()))
