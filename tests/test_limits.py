"""Rate limits against the real gateway (two replicas on one NATS): 429 with Retry-After and the IETF
RateLimit headers, shared by the replicas, per key, per tenant, per webhook task, and off at 0."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import uvicorn

from bus import tenants
from bus.config import BusConfig
from bus.embedded import free_port
from gateway.app import create_app
from gateway.config import GatewayConfig
from schemas.tenants import TenantSettings
from tests.conftest import Platform, wait_until

ACTORS = ("conversation", "executor")
POLICY = re.compile(r'^"(\w+)";q=(\d+);w=(\d+)$')
STATE = re.compile(r'^"(\w+)";r=(\d+);t=(\d+)$')

Start = Callable[..., Awaitable[Platform]]


@contextlib.asynccontextmanager
async def gateway(bus_config: BusConfig, **config: object) -> AsyncIterator[str]:
    """Another gateway replica, on its own port, on the test's NATS."""
    port = free_port()
    app = create_app(GatewayConfig(port=port, actors=ACTORS, **config), bus_config)  # type: ignore[arg-type]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve())

    async def started() -> bool:
        return server.started

    try:
        await wait_until(started, timeout=15, what="the gateway replica to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 15)


def items(header: str, pattern: re.Pattern[str]) -> dict[str, tuple[int, int]]:
    found = {}
    for item in header.split(", "):
        match = pattern.match(item)
        assert match is not None, item
        found[match[1]] = (int(match[2]), int(match[3]))
    return found


async def test_a_key_over_its_rate_gets_429_with_retry_after_and_every_answer_has_the_headers(
    start_platform: Start,
) -> None:
    platform = await start_platform(rate_limit=5)
    async with platform.client() as client:
        answers = [await client.get("/v1/conversations/nope") for _ in range(4)]
        answers.append(await client.post("/v1/tasks", json={"task_type": "nope"}))  # one that fails to decode counts
        assert [a.status_code for a in answers] == [404] * 4 + [422]
        for n, answer in enumerate(answers):
            assert items(answer.headers["ratelimit-policy"], POLICY) == {"key": (5, 60)}
            remaining, reset = items(answer.headers["ratelimit"], STATE)["key"]
            assert remaining == 4 - n and 0 < reset <= 60
        refused = await client.get("/v1/agents")
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["code"] == "rate_limited" and error["details"]["policy"] == "key"
        assert 1 <= int(refused.headers["retry-after"]) <= 12  # one request's worth: 60 s / 5
        assert items(refused.headers["ratelimit"], STATE)["key"][0] == 0
        assert "ratelimit-policy" in refused.headers
    async with platform.client(await platform.key_for("t1")) as other_key:  # the limit is the key's
        assert (await other_key.get("/v1/agents")).status_code == 200


async def test_two_gateway_replicas_share_a_key_s_limit(start_platform: Start, bus_config: BusConfig) -> None:
    platform = await start_platform(rate_limit=6)
    headers = {"Authorization": f"Bearer {platform.key}"}
    async with gateway(bus_config, rate_limit=6) as second, httpx.AsyncClient(headers=headers, timeout=10) as client:
        statuses = []
        for n in range(8):  # alternating replicas
            base = platform.url if n % 2 == 0 else second
            statuses.append((await client.get(f"{base}/v1/agents")).status_code)
    assert statuses == [200] * 6 + [429] * 2


async def test_zero_turns_the_limit_off(start_platform: Start) -> None:
    platform = await start_platform(rate_limit=0)
    async with platform.client() as client:
        answers = [await client.get("/v1/agents") for _ in range(30)]
    assert {a.status_code for a in answers} == {200}
    assert "ratelimit" not in answers[-1].headers


async def test_a_tenant_s_limit_counts_every_key_of_the_tenant(start_platform: Start) -> None:
    platform = await start_platform(rate_limit=100)

    async def followed() -> bool:
        async with platform.client() as client:
            return "tenant" in (await client.get("/v1/agents")).headers.get("ratelimit-policy", "")

    await tenants.write(platform.bus, "t1", TenantSettings(rate_limit=4))
    await wait_until(followed, timeout=5, what="the gateway to follow the tenant's settings")
    first, second = platform.key, await platform.key_for("t1")
    async with platform.client(first) as a, platform.client(second) as b:
        statuses = [(await (a if n % 2 else b).get("/v1/agents")).status_code for n in range(6)]
        refused = await a.get("/v1/agents")
    assert statuses.count(429) >= 2 and statuses[:1] == [200]
    assert refused.json()["error"]["details"]["policy"] == "tenant"
    assert set(items(refused.headers["ratelimit-policy"], POLICY)) == {"key", "tenant"}
    async with platform.client(await platform.key_for("t2")) as other:
        assert (await other.get("/v1/agents")).status_code == 200


async def test_a_webhook_is_limited_per_task(start_platform: Start) -> None:
    platform = await start_platform(webhook_rate_limit=3)
    async with httpx.AsyncClient(base_url=platform.url, timeout=10) as anonymous:
        first = [(await anonymous.post("/v1/tasks/webhooks/task-a", content=b"{}")).status_code for _ in range(4)]
        other = await anonymous.post("/v1/tasks/webhooks/task-b", content=b"{}")
    assert first == [401, 401, 401, 429]  # unsigned: refused by the signature check, once admitted
    assert other.status_code == 401
    assert items(other.headers["ratelimit-policy"], POLICY) == {"webhook": (3, 60)}
