"""Model providers by name, deployments, and how an agent's chain of them becomes pydantic-ai models.

An agent's `model` (agents file) is a chain tried in order. Each element is a deployment — a string
`"<provider>:<model>"` or a table `{ model = "<provider>:<model>", base_url, api_key_env, weight }` —
or a list of deployments of one model, which runs are spread over (smooth weighted round robin).

`<provider>` is one of pydantic-ai's (`openai`, `anthropic`, `google`, `ollama` with OLLAMA_BASE_URL,
`deepseek`, …), `qwen` (pydantic-ai's `alibaba`: DashScope's OpenAI-compatible endpoint), or a name
declared under `[providers.<name>]` (or by AGENTBUS_PROVIDER_<NAME>=<base url>): any OpenAI-compatible
server, or with `api = "anthropic"` an Anthropic-compatible one. A deployment with a `base_url` of its
own talks to that server (Anthropic's or Ollama's wire format for those providers, OpenAI chat
completions for any other).

Every provider deployment is wrapped in a `GuardedModel`: its circuit breaker (breaker.py) admits the
request or refuses it at once, and hears how it went. pydantic-ai's `ModelFallback` capability moves a
refused or failed request to the next deployment; `SelectModel` picks each step's first deployment.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import AsyncGenerator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec
from pydantic_ai import RunContext
from pydantic_ai.capabilities import ModelFallback, SelectModel
from pydantic_ai.exceptions import ModelAPIError, UserError
from pydantic_ai.messages import ModelMessage, ModelResponse
from pydantic_ai.models import Model, ModelRequestParameters, ModelSelectionContext, StreamedResponse, infer_model
from pydantic_ai.models.wrapper import WrapperModel
from pydantic_ai.settings import ModelSettings

from actors.executor.breaker import AVAILABILITY_ERRORS, Breakers
from schemas.errors import ErrorCode, ErrorReply

__all__ = [
    "ALIASES",
    "AnyChain",
    "Deployment",
    "DeploymentSpec",
    "GuardedModel",
    "ModelChain",
    "ModelSettingsSpec",
    "ProviderSpec",
    "Route",
    "answered_by",
    "chain_of",
    "env_providers",
    "model_unavailable_after",
    "unavailable_error",
]

CHOSEN_KEPT = 1024  # (run, step) -> deployment answers kept for repeated selections
ALIASES = {"qwen": "alibaba"}  # provider names we accept beside pydantic-ai's


class ProviderSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[providers.<name>]`: a server models can be named on as `<name>:<model>`."""

    base_url: str
    api_key_env: str | None = None  # the environment variable holding its key (none: the server needs none)
    api: str = "openai"  # its wire format: "openai" (chat completions) or "anthropic" (messages)


class DeploymentSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One deployment of a model, as a table."""

    model: str  # "<provider>:<model>"
    base_url: str | None = None
    api_key_env: str | None = None
    weight: int = 1  # its share of the runs among the deployments it is balanced with


ModelEntry = str | DeploymentSpec
ModelChain = str | DeploymentSpec | list[str | DeploymentSpec | list[str | DeploymentSpec]]
AnyChain = str | DeploymentSpec | Sequence[str | DeploymentSpec | Sequence[str | DeploymentSpec]]  # what code passes


class ModelSettingsSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[agents.<name>.model_settings]`; what is not set takes the executor's defaults."""

    max_tokens: int | None = None  # output tokens per model response (default AGENTBUS_MAX_OUTPUT_TOKENS)
    temperature: float | None = None
    timeout_s: float | None = None  # one model request, all its attempts (default AGENTBUS_MODEL_TIMEOUT)
    max_retries: int | None = None  # the provider SDK's own retries (default 0: the fallback chain and breakers retry)

    def resolve(self, *, max_tokens: int, timeout_s: float) -> ModelSettings:
        settings = ModelSettings(
            max_tokens=self.max_tokens or max_tokens,
            request_timeout=self.timeout_s or timeout_s,
            max_retries=self.max_retries if self.max_retries is not None else 0,
        )
        if self.temperature is not None:
            settings["temperature"] = self.temperature
        return settings


def chain_of(spec: AnyChain | None) -> list[list[DeploymentSpec]]:
    """The chain as groups of deployments (a group of one: no balancing)."""
    if spec is None:
        return []
    items = [spec] if isinstance(spec, str | DeploymentSpec) else spec
    groups: list[list[DeploymentSpec]] = []
    for item in items:
        members = [item] if isinstance(item, str | DeploymentSpec) else item
        groups.append([DeploymentSpec(model=m) if isinstance(m, str) else m for m in members])
    return [g for g in groups if g]


def env_providers(environ: dict[str, str] | None = None) -> dict[str, ProviderSpec]:
    """Providers from the environment: AGENTBUS_PROVIDER_<NAME>=<base url>, its key in <NAME>_API_KEY."""
    env = os.environ if environ is None else environ
    found: dict[str, ProviderSpec] = {}
    for variable, url in env.items():
        if variable.startswith("AGENTBUS_PROVIDER_") and url:
            name = variable.removeprefix("AGENTBUS_PROVIDER_")
            found[name.lower()] = ProviderSpec(base_url=url, api_key_env=f"{name}_API_KEY")
    return found


def _key(variable: str | None) -> str | None:
    return os.environ.get(variable) if variable else None


def provider_model(spec: DeploymentSpec, providers: dict[str, ProviderSpec]) -> tuple[Model, str]:
    """The pydantic-ai model for one deployment, and the name runs report it by. Raises UserError when
    the provider's credentials are missing."""
    provider, _, name = spec.model.partition(":")
    if not name:
        raise UserError(f"model {spec.model!r}: write it as <provider>:<model>")
    provider = ALIASES.get(provider, provider)
    named = providers.get(provider)
    base_url = spec.base_url or (named.base_url if named else None)
    api_key = _key(spec.api_key_env) or (_key(named.api_key_env) if named else None)
    if base_url is None:
        return infer_model(f"{provider}:{name}"), spec.model
    label = f"{spec.model}@{base_url}" if spec.base_url else spec.model
    api = named.api if named and not spec.base_url else ("anthropic" if provider == "anthropic" else "openai")
    # each SDK is imported when a deployment first uses it: the anthropic and openai packages took
    # 2.8 s of the executor's 11 s start on this 2-core machine (`python -X importtime`)
    if api == "anthropic":
        from pydantic_ai.models.anthropic import AnthropicModel
        from pydantic_ai.providers.anthropic import AnthropicProvider

        return AnthropicModel(name, provider=AnthropicProvider(base_url=base_url, api_key=api_key or "none")), label
    from pydantic_ai.models.openai import OpenAIChatModel

    if provider == "ollama":
        from pydantic_ai.providers.ollama import OllamaProvider

        return OpenAIChatModel(name, provider=OllamaProvider(base_url=base_url, api_key=api_key)), label
    from pydantic_ai.providers.openai import OpenAIProvider

    return OpenAIChatModel(name, provider=OpenAIProvider(base_url=base_url, api_key=api_key or "none")), label


class GuardedModel(WrapperModel):
    """A deployment behind its circuit breaker: refused at once while it is open; every outcome reported."""

    def __init__(self, wrapped: Model, *, deployment: str, breakers: Breakers) -> None:
        super().__init__(wrapped)
        self.deployment = deployment
        self.breakers = breakers

    @property
    def model_id(self) -> str:
        return self.deployment  # what the final ModelResponse names as the model that answered

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        await self.breakers.admit(self.deployment)
        try:
            response = await self.wrapped.request(messages, model_settings, model_request_parameters)
        except Exception as e:
            await self.breakers.failed(self.deployment, e)
            raise
        await self.breakers.succeeded(self.deployment)
        return response

    @asynccontextmanager
    async def request_stream(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
        run_context: RunContext[Any] | None = None,
    ) -> AsyncGenerator[StreamedResponse]:
        await self.breakers.admit(self.deployment)
        try:
            async with self.wrapped.request_stream(
                messages, model_settings, model_request_parameters, run_context
            ) as stream:
                yield stream
        except Exception as e:
            await self.breakers.failed(self.deployment, e)
            raise
        await self.breakers.succeeded(self.deployment)


@dataclass(slots=True)
class Deployment:
    model: Model
    name: str
    position: int  # its group's place in the chain
    weight: int = 1
    current: int = 0  # smooth weighted round robin state


@dataclass(slots=True)
class Route:
    """An agent's deployments in chain order, and the capabilities that route each model request."""

    deployments: list[Deployment]
    breakers: Breakers | None = None
    capabilities: list[Any] = field(default_factory=list)
    _chosen: OrderedDict[tuple[str | None, int], Deployment] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        if len(self.deployments) > 1:
            models = [d.model for d in self.deployments]
            self.capabilities = [SelectModel(self._select), ModelFallback(*models)]

    def _open(self, deployment: Deployment) -> bool:
        if self.breakers is None:
            return False
        return self.breakers.wait_s(self.breakers.cached(deployment.name)) > 0

    def _select(self, ctx: ModelSelectionContext[Any]) -> Model:
        """The first group with a deployment not known to be open; in it, the next by smooth weighted round
        robin (nginx's): the chosen one's counter drops by the total, so shares follow the weights. pydantic-ai
        may ask more than once for one step: the answer is kept per (run, step)."""
        key = (getattr(ctx.deps, "run_id", None), ctx.run_step)
        chosen = self._chosen.get(key)
        if chosen is None or self._open(chosen):
            chosen = self._next()
            self._chosen[key] = chosen
            while len(self._chosen) > CHOSEN_KEPT:
                self._chosen.popitem(last=False)
        return chosen.model

    def _next(self) -> Deployment:
        for position in sorted({d.position for d in self.deployments}):
            group = [d for d in self.deployments if d.position == position and not self._open(d)]
            if group:
                total = sum(d.weight for d in group)
                for d in group:
                    d.current += d.weight
                chosen = max(group, key=lambda d: d.current)
                chosen.current -= total
                return chosen
        return self.deployments[0]  # all open: it is refused at once, and the chain ends unavailable

    async def hold_open(self, stack: AsyncExitStack) -> None:
        """Enter every deployment's model for as long as `stack` lives: its HTTP client (and connection pool)
        then stays open across runs, instead of closing when a run that entered it ends."""
        for d in self.deployments:
            await stack.enter_async_context(d.model)

    def retry_after_s(self) -> float | None:
        """How long until some deployment may take a request, when every one is known open; else None."""
        if self.breakers is None or not self.deployments:
            return None
        waits = [self.breakers.wait_s(self.breakers.cached(d.name)) for d in self.deployments]
        return min(waits) if all(w > 0 for w in waits) else None


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for e in error.exceptions for leaf in _leaves(e)]
    return [error]


def model_unavailable_after(error: BaseException, route: Route | None, *, floor_s: float = 1.0) -> float | None:
    """When `error` says every model the run tried was unavailable (breaker open, 429, 5xx, connection,
    timeout): the seconds to wait before one may answer; else None (the run failed for another reason)."""
    leaves = _leaves(error)
    if not leaves or not all(isinstance(e, AVAILABILITY_ERRORS) for e in leaves):
        return None
    wait = route.retry_after_s() if route is not None else None
    if wait is None:  # some deployment failed without opening its breaker: what the provider asked, if it did
        wait = min((e.retry_after for e in leaves if isinstance(e, ModelAPIError) and e.retry_after), default=0.0)
    return max(wait, floor_s)


def unavailable_error(error: BaseException, route: Route | None) -> ErrorReply | None:
    """The run's error when every model it tried was unavailable: `model_unavailable`, with how long to wait."""
    wait = model_unavailable_after(error, route)
    if wait is None:
        return None
    seconds = math.ceil(wait)
    message = f"every model of this agent is unavailable; try again in {seconds}s"
    return ErrorReply(code=ErrorCode.MODEL_UNAVAILABLE, message=message, details={"retry_after_s": str(seconds)})


def answered_by(response: ModelResponse, route: Route | None) -> str | None:
    """The deployment that produced the run's final response (a fallback may have moved it off the first)."""
    if route is None or response.model_id not in {d.name for d in route.deployments}:
        return None
    return response.model_id


def deployments_of(groups: Sequence[Sequence[tuple[Model, str, int]]]) -> list[Deployment]:
    return [
        Deployment(model=model, name=name, position=position, weight=max(weight, 1))
        for position, group in enumerate(groups)
        for model, name, weight in group
    ]
