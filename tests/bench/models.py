"""Model functions the benchmarks run inside the executor process (`function:` model specs)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator

from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

STREAM_TOKENS = 200


async def timed_stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
    """First token carries the wall-clock time (ns) at which the model produced it."""
    yield f"{time.time_ns()} "
    for i in range(STREAM_TOKENS - 1):
        yield f"t{i} "


def timed() -> FunctionModel:
    """`function:tests.bench.models:timed`: the streaming model of the first-token benchmark."""
    return FunctionModel(stream_function=timed_stream, model_name="timed")


RESEARCH_LATENCY_S = 0.2
RESEARCH_QUESTIONS = 20


def _research_prompt(messages: list[ModelMessage]) -> str:
    first = messages[0]
    if not isinstance(first, ModelRequest):
        return ""
    return " ".join(str(p.content) for p in first.parts if isinstance(p, UserPromptPart))


async def research_stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
    """Planner, researcher and writer of a research job, told apart by their instructions; every
    request takes exactly RESEARCH_LATENCY_S. The plan has RESEARCH_QUESTIONS sub-questions, the
    follow-up none, and the researcher answers without a tool call: one request per sub-run."""
    await asyncio.sleep(RESEARCH_LATENCY_S)
    instructions = info.instructions or ""
    prompt = _research_prompt(messages)
    if "You plan research" in instructions:
        questions = [
            {"question": f"What about aspect {i} of the question?", "why": f"aspect {i}"}
            for i in range(1, RESEARCH_QUESTIONS + 1)
        ]
        if "Findings so far" in prompt:  # a follow-up: nothing more to ask
            questions = []
        args = json.dumps({"sub_questions": questions})
        yield {0: DeltaToolCall(name=info.output_tools[0].name, json_args=args, tool_call_id="plan")}
    elif "You write a research report" in instructions:
        runs = re.findall(r"### \[run:(\S+)\]", prompt)
        yield "# Report\n\nShort answer: it depends.\n\n" + "\n".join(f"- finding [run:{r}]" for r in runs)
    else:
        yield "The sources say it is so."


def research() -> FunctionModel:
    """`function:tests.bench.models:research`: the fixed-latency model of the research benchmark."""
    return FunctionModel(stream_function=research_stream, model_name="research")


def _one_tool(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Calls `current_time` once, then answers: a turn with one tool call."""
    if len(messages) == 1:
        return ModelResponse(parts=[ToolCallPart("current_time", {"timezone": "UTC"})])
    return ModelResponse(parts=[TextPart("It is now.")])


def _no_tool(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[TextPart("It is now.")])


def no_tool() -> FunctionModel:
    """`function:tests.bench.models:no_tool`: the same answer without the tool call, for comparison."""
    return FunctionModel(_no_tool, model_name="no-tool")


def one_tool() -> FunctionModel:
    """`function:tests.bench.models:one_tool`: the model of the tool-call benchmark."""
    return FunctionModel(_one_tool, model_name="one-tool")


def _one_mcp_tool(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Calls the MCP server's `echo` (whatever its prefix) once, then answers."""
    if len(messages) == 1:
        echo = next(t.name for t in info.function_tools if t.name.endswith("echo"))
        return ModelResponse(parts=[ToolCallPart(echo, {"text": "hi"})])
    return ModelResponse(parts=[TextPart("It is now.")])


def one_mcp_tool() -> FunctionModel:
    """`function:tests.bench.models:one_mcp_tool`: one call of an MCP server's tool (tests/mcp_servers.py)."""
    return FunctionModel(_one_mcp_tool, model_name="one-mcp-tool")


def one_tool_streamed() -> FunctionModel:
    """`function:tests.bench.models:one_tool_streamed`: `one_tool`, also streamed (the approvals benchmark
    watches the resumed run's tool result on its output)."""
    from tests.models import streamed

    return streamed(_one_tool)
