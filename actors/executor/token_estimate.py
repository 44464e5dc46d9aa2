"""How many tokens a history takes, estimated without a tokenizer, and corrected by what the provider counted.

pydantic-ai counts tokens only through a provider's API (`Model.count_tokens`, a request of its own)
or after the fact (each `ModelResponse.usage`); its local estimate is its test models' word count.
So a message is estimated at one token per 4 bytes of its text (UTF-8), the usual rule of thumb for
English with OpenAI's and Anthropic's tokenizers, plus a few tokens of framing; a non-text item (an
image, a file) at a flat 1,000. Where the history holds a response whose usage the provider
reported, that count (its input, which includes the instructions and tool definitions, plus its
output) and the estimate of what came after it is taken when it is larger: the provider has the
last word on text the rule of thumb undercounts (code, non-Latin scripts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic_ai.messages import (
    BaseToolCallPart,
    BaseToolReturnPart,
    ModelMessage,
    ModelRequest,
    ModelRequestPart,
    ModelResponse,
    ModelResponsePart,
    RetryFeedbackPart,
)

__all__ = ["BYTES_PER_TOKEN", "estimate_history", "estimate_message", "estimate_text", "part_text", "tokens_used"]

BYTES_PER_TOKEN = 4
FRAMING_TOKENS = 4  # a message's role and separators
NON_TEXT_TOKENS = 1_000  # an image or a file in a prompt: its real cost depends on the provider and its size


def estimate_text(text: str) -> int:
    return math.ceil(len(text.encode()) / BYTES_PER_TOKEN)


def part_text(part: ModelRequestPart | ModelResponsePart) -> tuple[str, int]:
    """What the model reads of a part, as text, and how many non-text items it holds besides."""
    if isinstance(part, BaseToolReturnPart):
        return f"{part.tool_name}: {part.model_response_str()}", 0
    if isinstance(part, BaseToolCallPart):
        return f"{part.tool_name}({part.args_as_json_str()})", 0
    if isinstance(part, RetryFeedbackPart):
        return part.model_response(), 0
    content = getattr(part, "content", None)
    if isinstance(content, str):
        return content, 0
    if isinstance(content, Sequence):
        texts = [item if isinstance(item, str) else getattr(item, "content", None) for item in content]
        strings = [t for t in texts if isinstance(t, str)]
        return "\n".join(strings), len(texts) - len(strings)
    return "", 0  # bookkeeping the model is not sent as text (tool availability, settings)


def estimate_message(message: ModelMessage) -> int:
    tokens = FRAMING_TOKENS
    for part in message.parts:
        text, others = part_text(part)
        tokens += estimate_text(text) + others * NON_TEXT_TOKENS
    return tokens


def estimate_history(messages: Sequence[ModelMessage]) -> int:
    """The messages' estimate plus the instructions sent with the latest request (once: only those are sent)."""
    tokens = sum(map(estimate_message, messages))
    last = messages[-1] if messages else None
    if isinstance(last, ModelRequest) and last.instructions:
        tokens += estimate_text(last.instructions)
    return tokens


def tokens_used(messages: Sequence[ModelMessage]) -> int:
    """The context these messages fill: the estimate, or the provider's count of its latest response plus
    the estimate of what followed it, whichever is larger."""
    estimated = estimate_history(messages)
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if isinstance(message, ModelResponse) and (counted := message.usage.input_tokens + message.usage.output_tokens):
            return max(estimated, counted + sum(map(estimate_message, messages[i + 1 :])))
    return estimated
