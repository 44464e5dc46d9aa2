"""Model functions the benchmarks run inside the executor process (`function:` model specs)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo, FunctionModel

STREAM_TOKENS = 200


async def timed_stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
    """First token carries the wall-clock time (ns) at which the model produced it."""
    yield f"{time.time_ns()} "
    for i in range(STREAM_TOKENS - 1):
        yield f"t{i} "


def timed() -> FunctionModel:
    """`function:tests.bench.models:timed`: the streaming model of the first-token benchmark."""
    return FunctionModel(stream_function=timed_stream, model_name="timed")
