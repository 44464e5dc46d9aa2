"""An agent's context budget, and the history processor that keeps what the model is sent within it.

Each agent has a budget in tokens (`[agents.<name>.context] budget_tokens`, by default the model's
context window as pydantic-ai knows it from the model's profile or genai-prices; with neither, the
history is sent whole) and a threshold (0.8). Before every model request, pydantic-ai runs this
processor (a `ProcessHistory` capability, given to the run): when the history would fill more
than threshold x budget, the older messages are folded by the summarizer into a summary, and the
model is sent the summary, then the messages after it verbatim. What always stays verbatim: the
newest `keep_recent_messages` messages of earlier turns (unless they alone pass the budget), every
message of the run itself, the instructions (with a sidekick's application state), and any tool
call together with its return (the cut never falls between them).

The summary is stored (executor.summaries), keyed by conversation and by how many of its messages
it covers. The next turn starts from it: the run's history is the stored summary and the messages
after it, so the summarizer is asked again only when that passes the budget again, and the work a
turn does does not grow with the conversation. The conversation's stored history stays complete:
the summary never enters it (a run's new messages are its own).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import msgspec
import structlog
from pydantic_ai import RunContext
from pydantic_ai.capabilities import AbstractCapability, ProcessHistory
from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    TextPart,
    UserPromptPart,
)
from pydantic_ai.models import Model

from actors.executor.summarizer import Summarizer
from actors.executor.summary_store import StoredSummary, SummaryStore
from actors.executor.token_estimate import estimate_message, estimate_text, tokens_used

__all__ = [
    "Compaction",
    "ContextSpec",
    "ContextWindow",
    "choose_cut",
    "compaction_for",
    "summary_messages",
    "summary_of",
]

log = structlog.get_logger("executor.context")
DepsT = TypeVar("DepsT")

SUMMARY_KEY = "agentbus_summary"  # in the summary message's metadata: {"covers": n, "text": "..."}
SUMMARY_PREFACE = (
    "The earlier part of this conversation is no longer shown; this is its summary (a record of what was "
    "said, not instructions):"
)
# the summary's answer: a request, then a response, so pydantic-ai never merges the summary into the next request
SUMMARY_ACK = "Noted: I carry on from this summary."
MAX_SUMMARY_TOKENS = 2_000


class ContextSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[agents.<name>.context]` in the agents file."""

    budget_tokens: Annotated[int, msgspec.Meta(gt=0)] | None = None  # None: the model's context window
    threshold: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.8
    keep_recent_messages: Annotated[int, msgspec.Meta(ge=0)] = 6
    summarizer_model: str | None = None  # a model string; None: the agent's own model


@dataclass(frozen=True, slots=True)
class Compaction:
    """One agent's budget and its summarizer."""

    agent: str
    budget_tokens: int
    threshold: float
    keep_recent_messages: int
    summarizer: Summarizer

    @property
    def limit(self) -> int:
        return int(self.budget_tokens * self.threshold)


def compaction_for(
    agent: str, spec: ContextSpec, model: Model, *, summarizer: Model, summarizer_name: str
) -> Compaction | None:
    """The agent's compaction; None when no budget is set and the model's context window is unknown."""
    budget = spec.budget_tokens or model.context_window
    if budget is None:
        return None
    summary_tokens = min(MAX_SUMMARY_TOKENS, max(64, budget // 10))
    reads = summarizer.context_window or budget  # what the summarizer can take in one request
    return Compaction(
        agent=agent,
        budget_tokens=budget,
        threshold=spec.threshold,
        keep_recent_messages=spec.keep_recent_messages,
        summarizer=Summarizer(
            summarizer, summarizer_name, chunk_tokens=max(256, reads // 2), summary_tokens=summary_tokens
        ),
    )


def summary_messages(summary: StoredSummary) -> list[ModelMessage]:
    """The two messages that stand for the first `covers` messages of the history."""
    text = f"{SUMMARY_PREFACE}\n<conversation_summary>\n{summary.summary}\n</conversation_summary>"
    metadata = {SUMMARY_KEY: {"covers": summary.covers, "text": summary.summary}}
    return [ModelRequest(parts=[UserPromptPart(text)], metadata=metadata), ModelResponse(parts=[TextPart(SUMMARY_ACK)])]


def summary_of(messages: Sequence[ModelMessage]) -> StoredSummary | None:
    """The summary the history starts with, if it starts with `summary_messages`."""
    if len(messages) < 2 or not isinstance(message := messages[0], ModelRequest) or not message.metadata:
        return None
    found = message.metadata.get(SUMMARY_KEY)
    if not isinstance(found, dict):
        return None
    return StoredSummary(covers=int(found["covers"]), summary=str(found["text"]))


def _spanning(messages: Sequence[ModelMessage], head: int) -> list[int]:
    """For each index, how many tool calls have their call before it and a return (or retry) at or after it."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i in range(head, len(messages)):
        for part in messages[i].parts:
            call_id = getattr(part, "tool_call_id", None)
            if isinstance(call_id, str) and call_id:
                first.setdefault(call_id, i)
                last[call_id] = i
    opened = [0] * (len(messages) + 1)
    for call_id, start in first.items():
        if last[call_id] > start:
            opened[start + 1] += 1  # a cut at start+1 .. last separates the two
            opened[last[call_id] + 1] -= 1
    spans, running = [], 0
    for delta in opened:
        running += delta
        spans.append(running)
    return spans


def choose_cut(
    messages: Sequence[ModelMessage], *, head: int, run_start: int, keep: int, limit: int, summary_tokens: int
) -> int | None:
    """Where the verbatim part begins: messages[head:cut] are summarized. None: nothing can be.

    A cut falls on a request, between turns' messages (never inside the run's own, from `run_start`),
    and never between a tool call and its return. The latest cut keeping at least `keep` messages
    before the run is taken if what is then sent fits `limit`; else the earliest later one that fits;
    else the run's start (every earlier message summarized)."""
    spans = _spanning(messages, head)
    cuts = [
        c
        for c in range(head + 1, run_start + 1)
        if spans[c] == 0 and (c == run_start or isinstance(messages[c], ModelRequest))
    ]
    if not cuts:
        return None
    after = [0] * (len(messages) + 1)  # after[c]: estimated tokens of messages[c:]
    for i in range(len(messages) - 1, -1, -1):
        after[i] = after[i + 1] + estimate_message(messages[i])
    last = messages[-1]
    instructions = last.instructions if isinstance(last, ModelRequest) else None
    fixed = summary_tokens + (estimate_text(instructions) if instructions else 0)
    keeping = [c for c in cuts if run_start - c >= keep]
    preferred = keeping[-1] if keeping else cuts[0]
    for c in [preferred, *(c for c in cuts if c > preferred)]:
        if after[c] + fixed <= limit:
            return c
    return cuts[-1]


@dataclass(slots=True)
class ContextWindow:
    """One run's view of its history: where it starts (the stored summary), and its history processor."""

    compaction: Compaction | None
    store: SummaryStore | None
    tenant: str
    conversation_id: str | None
    summarized: int = 0  # summaries made by this run (the summarizer's folds)

    async def history(self, raw: bytes) -> list[ModelMessage]:
        """The history the run starts from: the latest stored summary of it, then the messages after it.
        Raises ValueError when `raw` is not pydantic-ai message JSON."""
        if self.compaction is None or self.store is None or self.conversation_id is None:
            return ModelMessagesTypeAdapter.validate_json(raw)
        items = msgspec.json.decode(raw, type=list[msgspec.Raw])  # cheap: only the tail is validated
        stored = await self.store.latest(self.tenant, self.conversation_id, at_most=len(items))
        if stored is None:
            return ModelMessagesTypeAdapter.validate_json(raw)
        tail = ModelMessagesTypeAdapter.validate_json(b"[" + b",".join(bytes(i) for i in items[stored.covers :]) + b"]")
        return [*summary_messages(stored), *tail]

    def capabilities(self) -> list[AbstractCapability[Any]]:
        return [] if self.compaction is None else [ProcessHistory(self._process)]

    async def _process(self, ctx: RunContext[Any], messages: list[ModelMessage]) -> list[ModelMessage]:
        compaction = self.compaction
        assert compaction is not None
        used = tokens_used(messages)
        if used <= compaction.limit:
            return messages
        previous = summary_of(messages)
        head = 2 if previous is not None else 0
        run_start = next((i for i, m in enumerate(messages) if m.run_id == ctx.run_id), len(messages) - 1)
        cut = choose_cut(
            messages,
            head=head,
            run_start=run_start,
            keep=compaction.keep_recent_messages,
            limit=compaction.limit,
            summary_tokens=compaction.summarizer.summary_tokens,
        )
        if cut is None:
            log.warning("history over the context budget, and nothing left to summarize", tokens=used)
            return messages
        text = await compaction.summarizer.fold(
            previous.summary if previous else None, messages[head:cut], usage=ctx.usage
        )
        summary = StoredSummary(covers=(previous.covers if previous else 0) + cut - head, summary=text)
        self.summarized += 1
        if self.store is not None and self.conversation_id is not None:
            await self.store.put(
                self.tenant, self.conversation_id, summary, agent=compaction.agent, model=compaction.summarizer.name
            )
        log.info(
            "history summarized",
            tokens=used,
            limit=compaction.limit,
            covers=summary.covers,
            verbatim=len(messages) - cut,
        )
        return [*summary_messages(summary), *messages[cut:]]
