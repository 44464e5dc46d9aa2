"""Circuit breakers shared by executor replicas through JetStream KV (a real nats-server): opening,
the single half-open probe, Retry-After, closing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pydantic_ai.exceptions import ModelHTTPError, ModelRateLimitError, ModelRequestRejectedError, ModelServerError

from actors.executor.breaker import BreakerConfig, BreakerOpen, Breakers
from bus.client import Bus
from bus.config import BusConfig
from schemas.models import BreakerPhase
from tests.conftest import wait_until

DEPLOYMENT = "first:gpt-test"


@pytest.fixture
async def replicas(bus_config: BusConfig) -> AsyncIterator[tuple[Breakers, Breakers]]:
    """Two replicas' breakers, each over its own NATS connection."""
    one, two = await Bus.connect(bus_config), await Bus.connect(bus_config)
    config = BreakerConfig(failures=2, cooldown_s=0.5, cache_s=0.0)
    yield Breakers(one, config), Breakers(two, config)
    await one.close()
    await two.close()


def server_error() -> ModelServerError:
    error = ModelHTTPError.for_category(ModelServerError, status_code=500, model_name="gpt-test", body="boom")
    assert isinstance(error, ModelServerError)
    return error


async def outcome(breakers: Breakers) -> str:
    try:
        await breakers.admit(DEPLOYMENT)
    except BreakerOpen:
        return "refused"
    return "admitted"


async def test_failures_on_two_replicas_open_the_breaker_for_both(replicas: tuple[Breakers, Breakers]) -> None:
    one, two = replicas
    await one.failed(DEPLOYMENT, server_error())
    assert await outcome(two) == "admitted"  # one failure is below the threshold
    await two.failed(DEPLOYMENT, server_error())
    assert (await one.state(DEPLOYMENT)).phase is BreakerPhase.OPEN
    assert await outcome(one) == "refused" and await outcome(two) == "refused"


async def test_a_rejected_request_is_not_the_deployments_failure(replicas: tuple[Breakers, Breakers]) -> None:
    one, _ = replicas
    rejected = ModelHTTPError.for_category(
        ModelRequestRejectedError, status_code=400, model_name="gpt-test", body="bad request"
    )
    for _ in range(5):
        await one.failed(DEPLOYMENT, rejected)
    assert (await one.state(DEPLOYMENT)).phase is BreakerPhase.CLOSED


async def test_after_the_cool_down_exactly_one_probe_goes_and_its_success_closes_the_breaker(
    replicas: tuple[Breakers, Breakers],
) -> None:
    one, two = replicas
    for _ in range(2):
        await one.failed(DEPLOYMENT, server_error())

    async def cooled() -> bool:
        return one.wait_s(await one.state(DEPLOYMENT)) == 0

    await wait_until(cooled, timeout=10, what="the cool-down to pass")
    outcomes = await asyncio.gather(*(outcome(r) for r in (one, two) * 5))
    assert sorted(outcomes) == ["admitted"] + ["refused"] * 9
    assert (await two.state(DEPLOYMENT)).phase is BreakerPhase.HALF_OPEN
    await one.succeeded(DEPLOYMENT)
    assert (await two.state(DEPLOYMENT)).phase is BreakerPhase.CLOSED
    assert await outcome(two) == "admitted"


async def test_a_failed_probe_opens_it_again(replicas: tuple[Breakers, Breakers]) -> None:
    one, two = replicas
    for _ in range(2):
        await one.failed(DEPLOYMENT, server_error())

    async def probing() -> bool:
        return await outcome(two) == "admitted"

    await wait_until(probing, timeout=10, what="the probe to be let through")
    await two.failed(DEPLOYMENT, server_error())
    state = await one.state(DEPLOYMENT)
    assert state.phase is BreakerPhase.OPEN and await outcome(one) == "refused"


async def test_a_429_opens_it_at_once_until_its_retry_after(replicas: tuple[Breakers, Breakers]) -> None:
    one, two = replicas
    limited = ModelHTTPError.for_category(
        ModelRateLimitError, status_code=429, model_name="gpt-test", headers={"Retry-After": "90"}
    )
    await one.failed(DEPLOYMENT, limited)
    state = await two.state(DEPLOYMENT)
    assert state.phase is BreakerPhase.OPEN  # a single 429, under the threshold of 2
    assert 60 < two.wait_s(state) <= 90  # its Retry-After, not the 0.5 s cool-down
    with pytest.raises(BreakerOpen) as refused:
        await two.admit(DEPLOYMENT)
    assert refused.value.retry_after is not None and refused.value.retry_after > 60
