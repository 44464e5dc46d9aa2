"""What a run spent: pydantic-ai's usage, priced per response with genai-prices, naming what has no price.

pydantic-ai prices every response as it arrives (`ModelResponse.usage.cost`, filled from genai-prices by
its agent graph; None, not zero, for a model or provider genai-prices does not know), and the attempts
a fallback chain moved on from carry theirs (`ModelResponse.failed_attempts`). The run's cost is their
sum; if any part has no price the cost is None and the models are named, so nothing reads as free.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal

from pydantic_ai.messages import ModelMessage, ModelResponse
from pydantic_ai.usage import RequestUsage, RunUsage

from schemas.runs import Usage

__all__ = ["combined", "run_usage", "spent_usage"]


def _spends(response: ModelResponse, default_model: str) -> Iterator[tuple[str, RequestUsage]]:
    """The usage of the response and of each rejected attempt before it, with the model each came from."""
    for attempt in response.failed_attempts or ():
        if attempt.usage is not None and attempt.usage.has_values():
            yield attempt.model_name, attempt.usage
    yield response.model_name or default_model, response.usage


def run_usage(usage: RunUsage, messages: Sequence[ModelMessage], *, model: str, offline: bool) -> Usage:
    """A run's Usage from pydantic-ai's: `messages` are the ones the run added (its responses carry their
    cost), `model` names a response that names no model; the offline model costs nothing."""
    priced = Decimal(0)
    unpriced: set[str] = set()
    for message in messages:
        if not isinstance(message, ModelResponse) or offline:
            continue
        for name, spent in _spends(message, model):
            if spent.cost is None:
                unpriced.add(name)
            else:
                priced += spent.cost
    return Usage(
        requests=usage.requests,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        tool_calls=usage.tool_calls,
        cost_usd=None if unpriced else float(priced),
        priced_cost_usd=float(priced),
        unpriced_models=tuple(sorted(unpriced)),
    )


def spent_usage(usage: RunUsage, *, model: str, offline: bool) -> Usage:
    """What a run that did not complete spent (stopped at a limit, cancelled, failed): its messages are
    gone with the exception, so its cost is the one pydantic-ai summed as it went, and where that is
    unknown the cost is None with the run's model named as unpriced, never zero."""
    known = offline or not usage.requests or usage.cost is not None
    priced = 0.0 if offline or usage.cost is None else float(usage.cost)
    return Usage(
        requests=usage.requests,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        tool_calls=usage.tool_calls,
        cost_usd=priced if known else None,
        priced_cost_usd=priced,
        unpriced_models=() if known else (model,),
    )


def unpriced(usage: Usage) -> bool:
    """Whether some of it has no known cost (a Usage with no requests and no cost spent nothing)."""
    return usage.cost_usd is None and (usage.requests > 0 or bool(usage.unpriced_models))


def combined(usages: Iterable[Usage]) -> Usage:
    """The sum of several runs' usage: its cost None, and the unpriced models listed, if any run's is."""
    parts = list(usages)
    priced = sum(u.cost_usd if u.cost_usd is not None else u.priced_cost_usd for u in parts)
    models = tuple(sorted({m for u in parts for m in u.unpriced_models}))
    return Usage(
        requests=sum(u.requests for u in parts),
        input_tokens=sum(u.input_tokens for u in parts),
        output_tokens=sum(u.output_tokens for u in parts),
        tool_calls=sum(u.tool_calls for u in parts),
        cost_usd=None if any(unpriced(u) for u in parts) else priced,
        priced_cost_usd=priced,
        unpriced_models=models,
    )
