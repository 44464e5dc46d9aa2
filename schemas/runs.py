"""Executor actor: run requests, the run output stream, run records and their queries."""

from __future__ import annotations

import enum
from datetime import datetime

import msgspec

from schemas._base import Message, Record
from schemas.approvals import ApprovalDecided, CallResolved, ResumeRun, RunWaiting, Steered
from schemas.errors import ErrorCode, ErrorReply
from schemas.pages import Keyset

__all__ = [
    "CancelRun",
    "ExecutorCommand",
    "ExecutorEvent",
    "ExecutorQuery",
    "ExecutorReply",
    "GetRun",
    "GetRunTree",
    "HistoryRef",
    "ListRuns",
    "PipelineMode",
    "PipelineOutput",
    "PipelineStep",
    "RunAccepted",
    "RunCancelled",
    "RunCompleted",
    "RunEnd",
    "RunFailed",
    "RunFinished",
    "RunList",
    "RunNode",
    "RunNodeKind",
    "RunOutput",
    "RunRecord",
    "RunRequest",
    "RunStarted",
    "RunStatus",
    "RunTree",
    "RunView",
    "TextDelta",
    "ToolCalled",
    "ToolReturned",
    "Usage",
    "UsageReported",
]


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"  # parked: waits for approvals or an event, holding no slot (schemas/approvals.py)
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Usage(Record, frozen=True, kw_only=True):
    """What a run, or a group of runs, spent. The cost comes from genai-prices (through pydantic-ai): where
    a model has no known price `cost_usd` is None and `unpriced_models` names it, never a silent zero;
    `priced_cost_usd` is then what the priced part cost (a lower bound)."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    tool_calls: int = 0
    cost_usd: float | None = None  # None: not all of it could be priced (or, with no requests, nothing was spent)
    priced_cost_usd: float = 0.0
    unpriced_models: tuple[str, ...] = ()


# --- commands ---------------------------------------------------------------------------------


class HistoryRef(Record, frozen=True, kw_only=True):
    """A conversation's history held by the conversation actor, pinned to the turns it includes.

    The executor reads it in pages (`ab.conversation.svc.history`, GetHistory): what it started
    from, then every completed turn with a command sequence up to `through_seq`. Those turns have
    ended, so the same reference always reads the same history."""

    conversation_id: str
    through_seq: int = 0  # the last turn included (its command's stream sequence); 0: none
    size: int = 0  # bytes of pydantic-ai JSON it holds


class RunRequest(Message, frozen=True, kw_only=True, tag="run_request"):
    """Run one agent turn. `history` is pydantic-ai's own JSON (ModelMessagesTypeAdapter); a large
    one travels by reference instead (`history_ref`, with `history` left empty)."""

    run_id: str
    agent: str
    prompt: str
    history: msgspec.Raw = msgspec.Raw(b"[]")
    conversation_id: str | None = None
    context: dict[str, object] | None = None  # sidekick application state, None for chatbots
    data: dict[str, object] | None = None  # an event payload, given to the model as quoted JSON beside the prompt
    parent_run_id: str | None = None
    metadata: dict[str, str] = {}
    max_tokens: int | None = None  # the run fails with limit_exceeded past this many tokens (input + output)
    max_cost_usd: float | None = None  # likewise for cost, where the model's price is known
    sources: list[str] | None = None  # research: the source tools it may use (documents, web); None: its agent's
    # True: the executor announces the end only as RunFinished, and the requester publishes it on the
    # run's output once it has stored what the run produced (a conversation turn): so the last event
    # of a run's stream comes after the state it reports (read-your-writes)
    end_by_requester: bool = False
    # False: nobody watches the run's tokens (a task, a non-streamed turn): no text deltas or tool
    # calls are published, only its start, usage and end
    stream: bool = True
    history_ref: HistoryRef | None = None  # the history to read from its conversation (then `history` is empty)
    task_id: str | None = None  # the task whose run this is (set by the conversation actor for a task's turn)
    # True (a task's run, a research sub-run): when every model of its agent is unavailable, the run waits and is
    # redone once a breaker lets a request through, instead of failing `model_unavailable`
    wait_for_model: bool = False


class CancelRun(Message, frozen=True, kw_only=True, tag="cancel_run"):
    run_id: str
    reason: str = "cancelled by request"


ExecutorCommand = RunRequest | CancelRun | ResumeRun | CallResolved


# --- run output: ab.run.out.<tenant>.<run_id>, one ordered, resumable stream per run ----------


class RunAccepted(Message, frozen=True, kw_only=True, tag="accepted"):
    """The conversation took the turn; `position` turns are ahead of it (0: starts now)."""

    run_id: str
    position: int = 0


class RunStarted(Message, frozen=True, kw_only=True, tag="started"):
    """The executor began (or, with attempt > 1, restarted after a crash) the run."""

    run_id: str
    agent: str
    model: str
    offline: bool = False
    attempt: int = 1


class TextDelta(Message, frozen=True, kw_only=True, tag="delta"):
    """Text the model produced since the previous delta (tokens coalesced over a few ms)."""

    run_id: str
    text: str


class ToolCalled(Message, frozen=True, kw_only=True, tag="tool_call"):
    run_id: str
    tool_call_id: str
    tool_name: str
    args: str  # JSON text as the model produced it


class ToolReturned(Message, frozen=True, kw_only=True, tag="tool_result"):
    run_id: str
    tool_call_id: str
    tool_name: str
    content: str


class UsageReported(Message, frozen=True, kw_only=True, tag="usage"):
    run_id: str
    usage: Usage


class RunCompleted(Message, frozen=True, kw_only=True, tag="completed"):
    """The final message. `new_messages` is pydantic-ai JSON for the turn, to append to history."""

    run_id: str
    output: str
    new_messages: msgspec.Raw = msgspec.Raw(b"[]")
    usage: Usage = Usage()
    model: str = ""
    offline: bool = False


class RunFailed(Message, frozen=True, kw_only=True, tag="failed"):
    run_id: str
    error: ErrorReply


class RunCancelled(Message, frozen=True, kw_only=True, tag="cancelled"):
    run_id: str
    reason: str = ""


RunOutput = (
    RunAccepted
    | RunStarted
    | TextDelta
    | ToolCalled
    | ToolReturned
    | UsageReported
    | RunWaiting
    | ApprovalDecided
    | Steered
    | RunCompleted
    | RunFailed
    | RunCancelled
)

RunEnd = RunCompleted | RunFailed | RunCancelled
TERMINAL_OUTPUTS = (RunCompleted, RunFailed, RunCancelled)
STATUS_OF_END: dict[type[RunEnd], RunStatus] = {
    RunCompleted: RunStatus.COMPLETED,
    RunFailed: RunStatus.FAILED,
    RunCancelled: RunStatus.CANCELLED,
}


# --- pipelines: a pipeline run's output (RunCompleted.output) is a PipelineOutput as JSON -----


class PipelineMode(enum.StrEnum):
    SEQUENTIAL = "sequential"  # each step sees the results of the steps before it
    PARALLEL = "parallel"  # every step at once, on the same text


class PipelineStep(Record, frozen=True, kw_only=True):
    """One step's result: `output` is the agent's text, or its structured output as JSON values."""

    agent: str
    run_id: str = ""
    status: RunStatus
    output: object = None
    error: str | None = None
    usage: Usage = Usage()
    ms: float = 0.0
    error_code: ErrorCode | None = None  # how a failed step failed
    error_details: dict[str, str] = {}


class PipelineOutput(Record, frozen=True, kw_only=True):
    pipeline: str
    mode: PipelineMode
    steps: list[PipelineStep]


# --- events: ab.executor.evt.<tenant>.<run_id>.finished ---------------------------------------


class RunFinished(Message, frozen=True, kw_only=True, tag="run_finished"):
    """A run reached a terminal state; carries the terminal output so consumers need nothing else."""

    run_id: str
    conversation_id: str | None = None
    parent_run_id: str | None = None
    result: RunEnd


ExecutorEvent = RunFinished | RunWaiting


# --- queries ----------------------------------------------------------------------------------


class RunRecord(Record, frozen=True, kw_only=True):
    id: str
    tenant: str
    agent: str
    model: str
    status: RunStatus
    conversation_id: str | None = None
    parent_run_id: str | None = None
    task_id: str | None = None
    offline: bool = False
    attempt: int = 1
    usage: Usage = Usage()  # this run's own model requests: its sub-runs' are in their records (and in total_usage)
    error: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class GetRun(Message, frozen=True, kw_only=True, tag="get_run"):
    run_id: str
    with_total: bool = False  # also the usage of the run and every run under it (RunView.total_usage)


class GetRunTree(Message, frozen=True, kw_only=True, tag="get_run_tree"):
    """A run and every run started under it (sub-runs of a research job, a pipeline, a subagent)."""

    run_id: str


class ListRuns(Message, frozen=True, kw_only=True, tag="list_runs"):
    """The tenant's recorded runs, newest first (by `created_at`), after `after` when given; each filter that is
    set must match. A turn still queued behind another has no record yet, so is not listed."""

    limit: int = 50
    after: Keyset | None = None  # the previous page's `next_after`
    status: RunStatus | None = None
    agent: str | None = None
    task_id: str | None = None
    conversation_id: str | None = None
    parent_run_id: str | None = None  # a run's sub-runs (or a research job's)


ExecutorQuery = GetRun | CancelRun | GetRunTree | ListRuns


class RunView(Message, frozen=True, kw_only=True, tag="run"):
    run: RunRecord
    total_usage: Usage | None = None  # asked for with GetRun.with_total: the run's usage with its sub-runs'


class RunList(Message, frozen=True, kw_only=True, tag="run_list"):
    """A page of runs, each with `total_usage` (its own and every run's under it)."""

    runs: list[RunView]
    next_after: Keyset | None = None  # more after this page


class RunNodeKind(enum.StrEnum):
    RUN = "run"
    RESEARCH_JOB = "research_job"  # no run itself: it parents the runs of a research job


class RunNode(Record, frozen=True, kw_only=True):
    """A run (or a research job) with the runs started under it."""

    id: str
    kind: RunNodeKind = RunNodeKind.RUN
    run: RunRecord | None = None  # None for a research job
    children: list[RunNode] = []


class RunTree(Message, frozen=True, kw_only=True, tag="run_tree"):
    """The root first, then its descendants (each names its parent in `parent_run_id`), and the same
    runs nested under `root`."""

    runs: list[RunRecord]
    root: RunNode | None = None


ExecutorReply = RunView | RunList | RunTree | ErrorReply
