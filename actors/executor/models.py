"""Model strings to pydantic-ai models, and the offline model used when no provider is configured.

A model is a chain of deployments (providers.py: `openai:gpt-4o-mini`, `anthropic:…`, a named
OpenAI-compatible server, balanced groups), `test`, `offline`, or `function:<module>:<name>` naming
a pydantic-ai `Model` (or a zero-argument factory of one) — local code, allowed even offline. A
provider model whose provider is not configured (no API key) is left out of the chain, and with none
left the offline model stands in; that is said on start-up and in every run's metadata: nothing
pretends to be an LLM.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models import Model, infer_model
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from actors.executor.breaker import Breakers
from actors.executor.providers import (
    AnyChain,
    DeploymentSpec,
    GuardedModel,
    ProviderSpec,
    Route,
    chain_of,
    deployments_of,
    provider_model,
)

__all__ = ["OFFLINE", "ResolvedModel", "offline_model", "resolve_model"]

OFFLINE = "offline"
LOCAL_PREFIXES = ("function:", "test")
log = structlog.get_logger("executor.models")


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    model: Model
    name: str  # what runs report as their model
    offline: bool
    reason: str = ""  # why the offline model stands in, when it does
    route: Route | None = None  # the provider deployments behind `model`, with their breakers


def _last_prompt(messages: list[ModelMessage]) -> str:
    for message in reversed(messages):
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart) and isinstance(part.content, str):
                    return part.content
    return ""


OFFLINE_NOTE = (
    "[offline model: no LLM provider is configured, so this reply is not an LLM's. "
    "Set AGENTBUS_MODEL (e.g. openai:gpt-4o-mini) and the provider's API key.]"
)


def _offline_reply(messages: list[ModelMessage]) -> str:
    found = _searched(messages)
    if found is not None:  # it searched the documents: list what matched, cited
        hits = [h for h in found if isinstance(h, dict) and "document_id" in h][:3]
        lines = [f"{h.get('title', '')}: {h.get('snippet', '')} [doc:{h['document_id']}]" for h in hits]
        return f"{OFFLINE_NOTE} Documents matching the question: " + (" ".join(lines) or "none.")
    return f"{OFFLINE_NOTE} You said: {_last_prompt(messages)}"


def _searched(messages: list[ModelMessage]) -> list[Any] | None:
    """The hits of a search_documents call this run made, or None if it made none."""
    for message in messages:
        for part in message.parts if isinstance(message, ModelRequest) else ():
            if isinstance(part, ToolReturnPart) and part.tool_name == "search_documents":
                try:
                    hits = json.loads(part.content) if isinstance(part.content, str) else part.content
                except ValueError:
                    return []
                return hits if isinstance(hits, list) else []
    return None


def _search_args(messages: list[ModelMessage], info: AgentInfo) -> str | None:
    """With the search_documents tool and no search made yet, the offline model searches for the prompt's
    words (so a research job run offline still reads and cites the ingested documents)."""
    if not any(t.name == "search_documents" for t in info.function_tools) or _searched(messages) is not None:
        return None
    words = [w for w in re.findall(r"[A-Za-z0-9]+", _last_prompt(messages)) if len(w) > 3]
    return json.dumps({"query": " or ".join(words[:8]) or _last_prompt(messages)})


def placeholder(schema: dict[str, Any]) -> Any:
    """The simplest value a JSON schema accepts: what the offline model answers structured output with."""
    if "enum" in schema:
        return schema["enum"][0]
    match schema.get("type"):
        case "object":
            props = schema.get("properties", {})
            return {k: placeholder(props.get(k, {})) for k in schema.get("required", [])}
        case "array":
            return []
        case "number" | "integer":
            return schema.get("minimum", 0)
        case "boolean":
            return False
        case _:
            return "offline"


async def _offline_stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
    """`_offline_response`, streamed: its tool call whole, its text word by word."""
    part = _offline_response(messages, info).parts[0]
    if isinstance(part, ToolCallPart):
        yield {0: DeltaToolCall(name=part.tool_name, json_args=part.args_as_json_str(), tool_call_id=part.tool_call_id)}
        return
    assert isinstance(part, TextPart)
    for word in part.content.split(" "):
        yield word + " "


def _offline_response(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if info.output_tools and not info.allow_text_output:
        tool = info.output_tools[0]
        return ModelResponse(parts=[ToolCallPart(tool.name, placeholder(tool.parameters_json_schema))])
    if (search := _search_args(messages, info)) is not None:
        return ModelResponse(parts=[ToolCallPart("search_documents", search)])
    return ModelResponse(parts=[TextPart(_offline_reply(messages))])


def offline_model() -> FunctionModel:
    return FunctionModel(_offline_response, stream_function=_offline_stream, model_name=OFFLINE)


def _local(spec: str) -> Model:
    if spec.startswith("function:"):
        module_name, _, attr = spec.removeprefix("function:").partition(":")
        target = getattr(importlib.import_module(module_name), attr)
        model = target if isinstance(target, Model) else target()
        if not isinstance(model, Model):
            raise TypeError(f"{spec} is not a pydantic-ai Model or a factory of one")
        return model
    return infer_model(spec)


def resolve_model(
    spec: AnyChain | None,
    *,
    offline: bool = False,
    base_url: str | None = None,
    api_key_env: str | None = None,
    providers: dict[str, ProviderSpec] | None = None,
    breakers: Breakers | None = None,
) -> ResolvedModel:
    """The model for one agent; the offline model where no provider is configured. `base_url` and
    `api_key_env` (the agent's own) apply to each deployment that names none."""
    groups = chain_of(spec)
    if not groups or [[d.model for d in g] for g in groups] == [[OFFLINE]]:
        return ResolvedModel(offline_model(), OFFLINE, True, "no model configured")
    usable: list[list[tuple[Model, str, int]]] = []
    reasons: list[str] = []
    for group in groups:
        members: list[tuple[Model, str, int]] = []
        for d in group:
            if d.model.startswith(LOCAL_PREFIXES):
                members.append((_local(d.model), d.model, d.weight))
                continue
            if offline:
                reasons.append(f"{d.model}: AGENTBUS_OFFLINE is set")
                continue
            if d.base_url is None and base_url is not None:
                d = DeploymentSpec(model=d.model, base_url=base_url, api_key_env=d.api_key_env or api_key_env,
                                   weight=d.weight)  # fmt: skip
            try:
                model, name = provider_model(d, providers or {})
            except UserError as e:  # pydantic-ai's "set OPENAI_API_KEY …"
                reasons.append(f"{d.model}: {e}".split(". ")[0])
                continue
            guarded = GuardedModel(model, deployment=name, breakers=breakers) if breakers is not None else model
            members.append((guarded, name, d.weight))
        if members:
            usable.append(members)
    if not usable:
        return ResolvedModel(offline_model(), OFFLINE, True, "; ".join(reasons))
    if reasons:
        log.warning("models left out of the fallback chain", reasons=reasons)
    route = Route(deployments_of(usable), breakers=breakers)
    name = " > ".join(" | ".join(n for _, n, _ in g) for g in usable)
    return ResolvedModel(route.deployments[0].model, name, False, route=route)
