"""Models the tests run, in-process or in an actor subprocess (`AGENTBUS_MODEL=function:tests.models:<name>`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

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
