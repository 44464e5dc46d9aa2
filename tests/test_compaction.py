"""Compression near the token limit: what the model is sent once a conversation passes its agent's
context budget, end to end (gateway, conversation and executor actors, real nats-server and
PostgreSQL; a FunctionModel is both the agent's model and its summarizer), and where the cut falls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from actors.executor.compaction import SUMMARY_ACK, SUMMARY_PREFACE, choose_cut
from actors.executor.history import HistoryCache, read_history
from actors.executor.summarizer import INSTRUCTIONS as SUMMARIZER_INSTRUCTIONS
from actors.executor.token_estimate import estimate_message, estimate_text, tokens_used
from bus.headers import Trace
from schemas.runs import HistoryRef, RunRequest
from tests.conftest import Platform
from tests.models import prompts_of

AGENTS = """
[agents.assistant]
instructions = "Answer."

[agents.assistant.context]
budget_tokens = 1000
threshold = 0.8
keep_recent_messages = 2
"""
PROMPT = "p" * 396  # with its turn number, 100 tokens by the estimate (4 bytes a token) + 4 of framing


def prompt(turn: int) -> str:
    return f"{turn:03d} {PROMPT}"


@dataclass
class Model:
    """The agent's model and its summarizer, told apart by the summarizer's instructions."""

    sent: list[list[ModelMessage]] = field(default_factory=list)  # what the agent's model was sent, per request
    summarized: list[str] = field(default_factory=list)  # the summarizer's prompts

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        usage = RequestUsage(input_tokens=1, output_tokens=1)  # the estimate decides, not this count
        if info.instructions == SUMMARIZER_INSTRUCTIONS:
            self.summarized.append(prompts_of(messages)[-1])
            return ModelResponse(parts=[TextPart(f"summary {len(self.summarized)}")], usage=usage)
        self.sent.append(messages)
        return ModelResponse(parts=[TextPart("ok")], usage=usage)

    async def stream(self, messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        self.sent.append(messages)
        yield "ok"


def seen(messages: list[ModelMessage]) -> list[str]:
    """What a model was sent, one entry per message: a summary by its text, a prompt by its turn, a reply."""
    out = []
    for message in messages:
        for part in message.parts:
            if isinstance(part, UserPromptPart):
                text = str(part.content)
                summary = SUMMARY_PREFACE in text
                out.append(text.split("<conversation_summary>\n")[1].split("\n")[0] if summary else text[:3])
            elif isinstance(part, TextPart):
                out.append("ack" if part.content == SUMMARY_ACK else part.content)
    return out


async def test_past_the_budget_the_model_gets_a_stored_summary_and_the_recent_turns(
    start_platform: Callable[..., Awaitable[Platform]], tmp_path: Path
) -> None:
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS)
    model = Model()
    # its window would allow 100,000 tokens: the agent's budget of 1,000 wins; the summarizer reads 50,000 at once
    function = FunctionModel(model, stream_function=model.stream, profile={"context_window": 100_000})
    platform = await start_platform(function, agents_file=agents)
    async with platform.client() as client:
        conversation_id = (await client.post("/v1/conversations", json={})).json()["id"]

        async def turn(n: int) -> None:
            streamed = n in (8, 13)  # the turns that summarize: a streamed run is processed the same way
            body = {"message": prompt(n), "stream": streamed}
            r = await client.post(f"/v1/conversations/{conversation_id}/messages", json=body)
            assert r.status_code == 200, r.text
            assert ("event: completed" in r.text) if streamed else r.json()["message"]["content"] == "ok"

        # ~110 tokens a turn: turn 8 finds 7 earlier turns (777 tokens) + its prompt + instructions past 800
        for n in range(1, 8):
            await turn(n)
        assert model.summarized == []
        assert seen(model.sent[-1]) == [*(x for t in range(1, 7) for x in (f"{t:03d}", "ok")), "007"]
        await turn(8)
        assert len(model.summarized) == 1  # turns 1-6 folded; turn 7 (2 messages) stays verbatim
        assert "<summary_so_far>\n\n</summary_so_far>" in model.summarized[0]
        assert [f"{t:03d}" in model.summarized[0] for t in range(1, 9)] == [True] * 6 + [False] * 2
        assert seen(model.sent[-1]) == ["summary 1", "ack", "007", "ok", "008"]

        for n in range(9, 13):  # each next turn starts from the stored summary: no new one
            await turn(n)
            verbatim = [x for t in range(7, n) for x in (f"{t:03d}", "ok")]
            assert seen(model.sent[-1]) == ["summary 1", "ack", *verbatim, f"{n:03d}"]
        assert len(model.summarized) == 1
        await turn(13)  # past the budget again: the summary so far and turns 7-11 are folded into a new one
        assert len(model.summarized) == 2
        assert "<summary_so_far>\nsummary 1\n</summary_so_far>" in model.summarized[1]
        assert [f"{t:03d}" in model.summarized[1] for t in range(7, 14)] == [True] * 5 + [False] * 2
        assert seen(model.sent[-1]) == ["summary 2", "ack", "012", "ok", "013"]
        await turn(14)
        assert seen(model.sent[-1]) == ["summary 2", "ack", "012", "ok", "013", "ok", "014"]

        listed = (await client.get(f"/v1/conversations/{conversation_id}/messages", params={"limit": 100})).json()
    # the stored history stays complete: every turn, no summary, in the list and in the runs' history
    assert [m["content"][:3] for m in listed["messages"]] == [x for t in range(1, 15) for x in (f"{t:03d}", "ok")]
    ref = HistoryRef(conversation_id=conversation_id, through_seq=2**40, size=0)
    history = await read_history(
        platform.bus, HistoryCache(), RunRequest(run_id="r", agent="assistant", prompt="", history_ref=ref), Trace("t1")
    )
    assert [p[:3] for p in prompts_of(ModelMessagesTypeAdapter.validate_json(history))] == [
        f"{t:03d}" for t in range(1, 15)
    ]


def request(text: str = "", *returns: str) -> ModelRequest:
    parts: list[UserPromptPart | ToolReturnPart] = [
        ToolReturnPart("lookup", "result " * 50, tool_call_id=r) for r in returns
    ]
    return ModelRequest(parts=[*parts, UserPromptPart(text)] if text else parts)


def response(*calls: str) -> ModelResponse:
    return ModelResponse(parts=[ToolCallPart("lookup", {"q": "x"}, tool_call_id=c) for c in calls] or [TextPart("ok")])


def test_a_cut_never_separates_a_tool_call_from_its_return() -> None:
    history: list[ModelMessage] = [
        request("first " * 50), response("a"),  # 0, 1: a call answered at 2
        request("", "a"), response(),  # 2, 3
        request("second " * 50), response("b"),  # 4, 5: a call answered only in the next turn (deferred)
        request("third " * 50, "b"), response(),  # 6, 7
        request("now"),  # 8: the run's own request
    ]  # fmt: skip
    for keep in range(9):
        cut = choose_cut(history, head=0, run_start=8, keep=keep, limit=10_000, summary_tokens=10)
        # 2 would split call a from its return, 6 call b; 1, 3, 5, 7 are responses: only 4 and 8 are cuts
        assert cut == (8 if keep == 0 else 4)
    # what is left must fit the limit: the cut moves later, down to the run's own messages
    kept = sum(map(estimate_message, history[4:]))
    assert choose_cut(history, head=0, run_start=8, keep=8, limit=kept + 10, summary_tokens=10) == 4
    assert choose_cut(history, head=0, run_start=8, keep=2, limit=kept - 1, summary_tokens=10) == 8
    assert choose_cut(history[-1:], head=0, run_start=0, keep=0, limit=1, summary_tokens=10) is None


def test_the_instructions_sent_count_once_a_sidekicks_state_included() -> None:
    state = '{"cart": "' + "item " * 800 + '"}'  # 4 KB of application state in this turn's instructions
    old = ModelRequest(parts=[UserPromptPart("hello")], instructions=state)
    now = ModelRequest(parts=[UserPromptPart("again")], instructions=state)
    without = tokens_used([ModelRequest(parts=[UserPromptPart("hello")]), response(), request("again")])
    assert tokens_used([old, response(), now]) == without + estimate_text(state)  # the latest request's only


def test_the_providers_count_of_the_context_wins_over_the_estimate() -> None:
    history: list[ModelMessage] = [request("hello"), response(), request("again")]
    estimated = tokens_used(history)
    assert estimated < 50
    counted = ModelResponse(parts=[TextPart("ok")], usage=RequestUsage(input_tokens=5_000, output_tokens=20))
    assert tokens_used([history[0], counted, history[2]]) == 5_020 + estimate_message(history[2])
