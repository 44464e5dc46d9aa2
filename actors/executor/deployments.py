"""ab.executor.svc.models: each agent's model deployments with their breakers, and a one-request check of each."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from pydantic_ai.direct import model_request
from pydantic_ai.messages import ModelRequest
from pydantic_ai.models import Model
from pydantic_ai.models.wrapper import WrapperModel
from pydantic_ai.settings import ModelSettings

from actors.executor.agents import Runner
from actors.executor.breaker import Breakers
from bus.actor import Endpoint
from bus.headers import Trace
from schemas._base import Message
from schemas.models import DeploymentCheck, DeploymentStatus, ListModels, ModelList

__all__ = ["models_endpoint"]

CHECK_PROMPT = "Reply with the word ok."
CHECK_TIMEOUT_S = 30.0


async def check(name: str, model: Model) -> DeploymentCheck:
    """One tiny request straight to the deployment (around its breaker, which it neither asks nor tells)."""
    raw = model.wrapped if isinstance(model, WrapperModel) else model
    started = time.perf_counter()
    settings = ModelSettings(max_tokens=8, request_timeout=CHECK_TIMEOUT_S, max_retries=0)
    try:
        async with raw:  # as a run does: its HTTP client is open for the request
            await model_request(raw, [ModelRequest.user_text_prompt(CHECK_PROMPT)], model_settings=settings)
    except Exception as e:  # the provider's error, for the operator who asked
        return DeploymentCheck(deployment=name, ok=False, error=f"{type(e).__name__}: {e}"[:500])
    return DeploymentCheck(deployment=name, ok=True, ms=round((time.perf_counter() - started) * 1000, 1))


def models_endpoint(
    runners: Callable[[], Mapping[str, Runner]], breakers: Callable[[], Breakers]
) -> Endpoint[ListModels]:
    async def answer(query: ListModels, _: Trace) -> Message:
        statuses: list[DeploymentStatus] = []
        distinct: dict[str, Model] = {}
        offline: list[str] = []
        for name, runner in sorted(runners().items()):
            route = runner.model.route
            if route is None:
                if runner.model.offline:
                    offline.append(name)
                continue
            for d in route.deployments:
                state = await breakers().state(d.name)
                statuses.append(
                    DeploymentStatus(
                        agent=name, deployment=d.name, position=d.position, weight=d.weight,
                        breaker=state, retry_after_s=round(breakers().wait_s(state), 1),
                    )
                )  # fmt: skip
                distinct.setdefault(d.name, d.model)
        checks = list(await asyncio.gather(*(check(n, m) for n, m in distinct.items()))) if query.check else []
        return ModelList(models=statuses, checks=checks, offline=offline)

    return Endpoint("models", ListModels, answer)
