"""One agent run: pydantic-ai's event stream turned into run output, and how the run ended."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import structlog
from pydantic_ai import AgentRunResult, AgentRunResultEvent, AgentStreamEvent, CancellationToken, DeferredToolRequests
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.exceptions import RunCancelled as AgentRunCancelled
from pydantic_ai.exceptions import UsageLimitExceeded
from pydantic_ai.messages import (
    FunctionToolCallEvent,
    FunctionToolResultEvent,
    ModelMessagesTypeAdapter,
    PartDeltaEvent,
    PartStartEvent,
    TextPart,
    TextPartDelta,
    ToolReturnPart,
)
from pydantic_ai.usage import RunUsage

from actors.executor.agents import RunDeps, Runner
from actors.executor.budgets import Allowance
from actors.executor.compaction import ContextWindow
from actors.executor.costs import run_usage, spent_usage
from actors.executor.history import HistoryUnreadable
from actors.executor.isolation import ToolStopped
from actors.executor.journal import JournalScope
from actors.executor.limits import limit_hit, quoted_event, usage_limits
from actors.executor.output import OutputWriter
from actors.executor.parking import Parked, Resumption
from actors.executor.providers import answered_by, unavailable_error
from schemas._base import Message
from schemas.errors import ErrorCode, ErrorReply
from schemas.runs import (
    RunCancelled,
    RunCompleted,
    RunEnd,
    RunFailed,
    RunRequest,
    TextDelta,
    ToolCalled,
    ToolReturned,
    Usage,
    UsageReported,
)

__all__ = ["run_agent", "user_prompt"]

log = structlog.get_logger("executor")
N = TypeVar("N", int, float)


async def run_agent(
    runner: Runner,
    req: RunRequest,
    deps: RunDeps,
    *,
    token: CancellationToken,
    writer: OutputWriter,
    cancel_reason: Callable[[], str],
    history: Callable[[], Awaitable[bytes]],
    context: ContextWindow | None = None,
    allowance: Allowance | None = None,
    resume: Resumption | None = None,
    journal: JournalScope | None = None,
    steering: AbstractCapability[Any] | None = None,
) -> tuple[RunEnd | Parked, Usage]:
    """Run the agent on the request, streaming its text and tool calls to `writer`; how it ended, or how it
    parked (a tool call waits for approval or an event: actors/executor/parking.py).

    `history` gives the request's history as JSON (read from its conversation when it travels by
    reference); a conversation that cannot answer now raises BusError, and the run is redone later.
    `context` starts it from its stored summary and keeps what the model is sent within the budget;
    `allowance`, what is left of the tenant's budgets, stops it as pydantic-ai's usage limits do. `resume`
    goes on from a park instead, with its messages and its calls' decisions; `journal`, where its finished
    steps are kept, resumes it from them after a crash (actors/executor/journal.py); `steering` gives it
    the messages sent to the run while it goes (actors/executor/steering.py)."""
    run_id = req.run_id
    context = context or ContextWindow(None, None, "", None)
    if resume is not None:
        messages, base = resume.messages, resume.base
    else:
        try:
            raw = await history()
        except HistoryUnreadable as e:
            return _failed(run_id, ErrorCode.NOT_FOUND, str(e)), Usage()
        try:
            messages = await context.history(raw)
        except ValueError as e:
            return _failed(run_id, ErrorCode.INVALID, f"history is not pydantic-ai message JSON: {e}"), Usage()
        base = len(messages)
    allowance = allowance or Allowance()
    limits = usage_limits(
        runner.limits,
        max_tokens=_least(req.max_tokens, allowance.tokens),
        max_cost_usd=_least(req.max_cost_usd, allowance.usd),
    )
    spent = RunUsage()  # the run adds to it as it goes: a run stopped half-way keeps what it spent
    options: dict[str, Any] = {  # the same for a streamed and a plain run
        "message_history": messages,
        "deps": deps,
        "cancellation_token": token,
        "usage_limits": limits,
        "capabilities": [*context.capabilities(), *([steering] if steering else [])],
        "usage": spent,
    }
    if resume is not None:
        options["deferred_tool_results"] = resume.results
    prompt = user_prompt(req) if resume is None else None
    result: AgentRunResult[Any] | None = None
    try:
        async with journal or contextlib.nullcontext():
            if req.stream:
                result = await _streamed(runner, prompt, req, writer, options, journal)
            else:  # nobody watches its tokens: pydantic-ai's plain run costs about a third less CPU
                result = await runner.agent.run(prompt, **options)
    except Exception as e:
        if journal is not None and (unkept := journal.failure) is not None:
            raise unkept from e  # its journal could not be written: the run is redone, not failed
        ended = _ended_early(req, e, runner, writer, cancel_reason, allowance)
        if ended is None and (lost := writer.failure) is not None:
            raise lost from e
        assert ended is not None
        return ended, spent_usage(spent, model=runner.model.name, offline=runner.model.offline)
    if result is None:
        return _failed(run_id, ErrorCode.INTERNAL, "the agent ended without a result"), Usage()
    if isinstance(result.output, DeferredToolRequests):
        usage = run_usage(result.usage, result.new_messages(), model=runner.model.name, offline=runner.model.offline)
        return Parked(requests=result.output, messages=result.all_messages_json(), base=base), usage
    return _completed(runner, req, result, writer, base=base if resume is not None else None)


def _least(own: N | None, budget: N | None) -> N | None:
    """The tighter of the request's own limit and what is left of the tenant's budget."""
    return budget if own is None else own if budget is None else min(own, budget)


def _ended_early(
    req: RunRequest,
    error: Exception,
    runner: Runner,
    writer: OutputWriter,
    cancel_reason: Callable[[], str],
    allowance: Allowance,
) -> RunEnd | None:
    """How a run that raised `error` ended; None when the bus failed, not the run (it goes back and is redone)."""
    run_id = req.run_id
    match error:
        case AgentRunCancelled():
            return RunCancelled(run_id=run_id, reason=cancel_reason())
        case UsageLimitExceeded():
            hit = limit_hit(error)
            if (spent := allowance.stopped(hit, max_tokens=req.max_tokens, max_cost_usd=req.max_cost_usd)) is not None:
                return RunFailed(run_id=run_id, error=spent)
            limit = ErrorReply(code=ErrorCode.LIMIT_EXCEEDED, message=str(error), details={"limit": hit})
            return RunFailed(run_id=run_id, error=limit)
        case ToolStopped():  # an isolated tool stopped at its CPU, memory or wall-time limit
            details = {"limit": error.limit, "tool": error.tool}
            stopped = ErrorReply(code=ErrorCode.LIMIT_EXCEEDED, message=str(error), details=details)
            return RunFailed(run_id=run_id, error=stopped)
    if writer.failure is not None:
        return None
    if (unavailable := unavailable_error(error, runner.model.route)) is not None:  # every model it tried is down
        log.warning("run failed: no model available", error=repr(error))
        return RunFailed(run_id=run_id, error=unavailable)
    log.warning("run failed", error=repr(error))  # the model or a tool failed: the run fails, the actor serves on
    return _failed(run_id, ErrorCode.UNAVAILABLE, f"{type(error).__name__}: {error}")


async def _streamed(
    runner: Runner,
    prompt: str | list[str] | None,
    req: RunRequest,
    writer: OutputWriter,
    options: dict[str, Any],
    journal: JournalScope | None,
) -> AgentRunResult[Any] | None:
    """The run with its text deltas and tool calls published as they come. Under a journal, the model's
    text comes live from inside its step (the run's events carry it only once the step is over)."""

    def emit(event: AgentStreamEvent) -> None:
        if (output := _output_of(req.run_id, event)) is not None:
            writer.emit(output)

    if journal is not None:
        journal.live = emit
    result: AgentRunResult[Any] | None = None
    async with runner.agent.run_stream_events(prompt, **options) as events:
        async for event in events:
            if isinstance(event, AgentRunResultEvent):
                result = event.result
            elif journal is None or not isinstance(event, PartStartEvent | PartDeltaEvent):
                emit(event)
    return result


def _output_of(run_id: str, event: AgentStreamEvent) -> Message | None:
    """The run output an agent event becomes, if any."""
    match event:
        case PartStartEvent(part=TextPart(content=text)) if text:
            return TextDelta(run_id=run_id, text=text)
        case PartDeltaEvent(delta=TextPartDelta(content_delta=text)) if text:
            return TextDelta(run_id=run_id, text=text)
        case FunctionToolCallEvent(part=call):
            args = call.args_as_json_str()
            return ToolCalled(run_id=run_id, tool_call_id=call.tool_call_id, tool_name=call.tool_name, args=args)
        case FunctionToolResultEvent(part=ToolReturnPart() as ret):
            content = ret.model_response_str()
            return ToolReturned(run_id=run_id, tool_call_id=ret.tool_call_id, tool_name=ret.tool_name, content=content)
        case _:
            return None


def _completed(
    runner: Runner, req: RunRequest, result: AgentRunResult[Any], writer: OutputWriter, *, base: int | None
) -> tuple[RunEnd, Usage]:
    """The run's end. `base`, for a run that went on from a park: its messages after the history are its turn's."""
    run_id = req.run_id
    if base is None:
        new_messages = result.new_messages_json()
    else:
        new_messages = ModelMessagesTypeAdapter.dump_json(result.all_messages()[base:])
    usage = run_usage(result.usage, result.new_messages(), model=runner.model.name, offline=runner.model.offline)
    if req.stream:  # else the end, which carries the usage too, is all anyone reads
        writer.emit(UsageReported(run_id=run_id, usage=usage))
    output = result.output if isinstance(result.output, str) else msgspec.json.encode(result.output).decode()
    completed = RunCompleted(
        run_id=run_id,
        output=output,
        new_messages=msgspec.Raw(new_messages),
        usage=usage,
        model=answered_by(result.response, runner.model.route) or runner.model.name,
        offline=runner.model.offline,
    )
    return completed, usage


def _failed(run_id: str, code: ErrorCode, message: str) -> RunFailed:
    return RunFailed(run_id=run_id, error=ErrorReply(code=code, message=message))


def user_prompt(req: RunRequest) -> str | list[str]:
    """The prompt, and an event payload as a separate, quoted JSON part: data the model reads, never instructions."""
    if req.data is None:
        return req.prompt
    return [req.prompt, quoted_event("The event that started this task follows as JSON.", req.data, indent=1)]
