"""Models the tests run, in-process or in an actor subprocess (`AGENTBUS_MODEL=function:tests.models:<name>`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

WORDS = [f"w{i} " for i in range(40)]


def _reply(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[TextPart("".join(WORDS))])


async def _slow_words(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
    for word in WORDS:
        await asyncio.sleep(0.05)
        yield word


def slow() -> FunctionModel:
    """40 words, one every 50 ms (2 s a run): long enough to kill a process in the middle."""
    return FunctionModel(_reply, stream_function=_slow_words, model_name="slow")


class Gate:
    """A streaming model that sends `before`, waits until the test opens the gate, then sends `after`."""

    def __init__(self, before: list[str], after: list[str]) -> None:
        self.before = before
        self.after = after
        self.opened = asyncio.Event()
        self.reached = asyncio.Event()
        self.requests: list[list[ModelMessage]] = []

    async def _stream(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        self.requests.append(messages)
        for word in self.before:
            yield word
        self.reached.set()
        await self.opened.wait()
        for word in self.after:
            yield word

    async def _whole(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        """The same, for a run nobody streams: it waits at the gate, then answers whole."""
        self.requests.append(messages)
        self.reached.set()
        await self.opened.wait()
        return ModelResponse(parts=[TextPart("".join(self.before + self.after))])

    def model(self) -> FunctionModel:
        return FunctionModel(self._whole, stream_function=self._stream, model_name="gate")


def replying(reply: Callable[[list[ModelMessage], AgentInfo], str]) -> FunctionModel:
    """A model answering `reply(messages, info)`, streamed word by word or whole (as the caller asks)."""

    def whole(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[TextPart(reply(messages, info))])

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        for word in reply(messages, info).split(" "):
            yield word + " "

    return FunctionModel(whole, stream_function=stream, model_name="replying")


def prompts_of(messages: list[ModelMessage]) -> list[str]:
    """The user prompts a model was given, in order."""
    return [
        str(p.content)
        for m in messages
        if isinstance(m, ModelRequest)
        for p in m.parts
        if isinstance(p, UserPromptPart)
    ]


def _mailer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Asks to send two emails and the time in one step; then answers with what each call returned."""
    last = messages[-1]
    returns = [p for p in last.parts if isinstance(p, ToolReturnPart)] if isinstance(last, ModelRequest) else []
    if returns:
        return ModelResponse(parts=[TextPart(" | ".join(f"{p.tool_name}: {p.model_response_str()}" for p in returns))])
    return ModelResponse(
        parts=[
            ToolCallPart("send_email", {"to": "a@example.com", "body": "hello"}, tool_call_id="mail-a"),
            ToolCallPart("send_email", {"to": "b@example.com", "body": "hello"}, tool_call_id="mail-b"),
            ToolCallPart("current_time", {}, tool_call_id="time"),
        ]
    )


def streamed(whole: Callable[[list[ModelMessage], AgentInfo], ModelResponse]) -> FunctionModel:
    """A model answering `whole(messages, info)`, also when streamed (text whole, each tool call in one delta)."""

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        for i, part in enumerate(whole(messages, info).parts):
            if isinstance(part, TextPart):
                yield part.content
            elif isinstance(part, ToolCallPart):
                yield {
                    i: DeltaToolCall(
                        name=part.tool_name, json_args=part.args_as_json_str(), tool_call_id=part.tool_call_id
                    )
                }

    return FunctionModel(whole, stream_function=stream, model_name=getattr(whole, "__name__", "streamed").strip("_"))


def mailer() -> FunctionModel:
    """A model whose one step needs two approvals and one plain call (tests/test_approvals.py)."""
    return streamed(_mailer)
