"""Research actor: research jobs (plan, fan out, gather, synthesize), and the sources they read:
documents a tenant ingests, and web pages fetched on request."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated

import msgspec

from schemas._base import Message, Record
from schemas.errors import ErrorReply
from schemas.fields import AgentName, DocumentType
from schemas.notifier import NotificationConfig
from schemas.pages import Keyset
from schemas.runs import Usage

__all__ = [
    "CancelResearch",
    "Citation",
    "Document",
    "DocumentHit",
    "DocumentHits",
    "DocumentList",
    "DocumentView",
    "FetchPage",
    "FetchedPage",
    "GetDocument",
    "GetResearch",
    "IngestDocument",
    "ListDocuments",
    "ListResearch",
    "PhaseChanged",
    "ResearchBudget",
    "ResearchCommand",
    "ResearchEvent",
    "ResearchFinished",
    "ResearchJob",
    "ResearchList",
    "ResearchQuery",
    "ResearchReply",
    "ResearchSpec",
    "ResearchStatus",
    "ResearchView",
    "SearchDocuments",
    "Source",
    "StartResearch",
    "StopReason",
    "SubQuestion",
    "Subrun",
    "SubrunFinished",
    "SubrunKind",
    "SubrunStarted",
    "Totals",
]


class Document(Record, frozen=True, kw_only=True):
    id: str
    tenant: str
    title: str
    content_type: str  # text/plain, text/markdown or text/html (HTML is stored as its text)
    content: str
    created_at: datetime


class DocumentHit(Record, frozen=True, kw_only=True):
    document_id: str
    title: str
    rank: float
    snippet: str  # the best matching fragments, matches between « and »


class IngestDocument(Message, frozen=True, kw_only=True, tag="ingest_document"):
    document_id: str
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    content: Annotated[str, msgspec.Meta(min_length=1)]
    content_type: DocumentType = "text/plain"


class GetDocument(Message, frozen=True, kw_only=True, tag="get_document"):
    document_id: str


class ListDocuments(Message, frozen=True, kw_only=True, tag="list_documents"):
    limit: int = 50
    after: str | None = None


class SearchDocuments(Message, frozen=True, kw_only=True, tag="search_documents"):
    """Full-text search (PostgreSQL, English stemming; web-search syntax: "quoted", -excluded, or)."""

    query: str
    limit: int = 10


class FetchPage(Message, frozen=True, kw_only=True, tag="fetch_page"):
    """Fetch a web page as text (http/https, public addresses only, size-capped): the agents' fetch_url tool."""

    url: str


class DocumentView(Message, frozen=True, kw_only=True, tag="document"):
    document: Document


class DocumentList(Message, frozen=True, kw_only=True, tag="document_list"):
    documents: list[Document]
    next_after: str | None = None


class DocumentHits(Message, frozen=True, kw_only=True, tag="document_hits"):
    hits: list[DocumentHit]


class FetchedPage(Message, frozen=True, kw_only=True, tag="fetched_page"):
    url: str
    title: str
    content_type: str
    text: str
    truncated: bool = False  # the page was longer than the size cap


# --- research jobs ------------------------------------------------------------------------------


class ResearchStatus(enum.StrEnum):
    QUEUED = "queued"
    PLANNING = "planning"
    RESEARCHING = "researching"  # sub-questions (and follow-ups) running
    SYNTHESIZING = "synthesizing"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


TERMINAL_STATUSES = (ResearchStatus.COMPLETED, ResearchStatus.CANCELLED, ResearchStatus.FAILED)


class StopReason(enum.StrEnum):
    """The limit that ended a job early (it still ends `completed`, with a report of what was found)."""

    MAX_SUBRUNS = "max_subruns"
    MAX_TOKENS = "max_tokens"
    MAX_COST = "max_cost_usd"
    DEADLINE = "deadline_seconds"


class SubrunKind(enum.StrEnum):
    PLAN = "plan"  # the planner: the question -> sub-questions
    QUESTION = "question"  # one sub-question, answered by the research agent with the source tools
    FOLLOW_UP = "follow_up"  # the planner again: the findings so far -> follow-up sub-questions
    REPORT = "report"  # the writer: the findings -> the cited report


class ResearchBudget(Record, frozen=True, kw_only=True):
    """Hard limits; None means no limit. Sub-runs count every executor run the job starts."""

    max_subruns: Annotated[int, msgspec.Meta(ge=1, le=1000)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=10**12)] | None = None
    max_cost_usd: Annotated[float, msgspec.Meta(gt=0, le=10**6)] | None = None


class Totals(Record, frozen=True, kw_only=True):
    subruns: int = 0
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0  # None once a sub-run's cost is unknown (a model genai-prices does not price)


class SubQuestion(Record, frozen=True, kw_only=True):
    question: str
    why: str = ""


class Source(Record, frozen=True, kw_only=True):
    """A source a sub-run read: `ref` is how reports cite it (`doc:<id>` or the URL)."""

    ref: str
    title: str


class Subrun(Record, frozen=True, kw_only=True):
    run_id: str  # deterministic: <job>-plan, <job>-q<n>, <job>-follow-up<depth>, <job>-report
    kind: SubrunKind
    depth: int = 0
    question: str | None = None
    why: str | None = None
    status: str  # pending, running, completed, failed, cancelled
    output: str | None = None
    error: str | None = None
    sources: list[Source] = []
    usage: Usage = Usage()
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Citation(Record, frozen=True, kw_only=True):
    ref: str  # as written in the report: doc:<id>, run:<id>, or a URL
    kind: str  # document, subrun or url
    title: str
    verified: bool  # the ref names a document, page or sub-run this job actually read or ran


class ResearchJob(Record, frozen=True, kw_only=True):
    id: str
    tenant: str
    question: str
    agent: str  # answers the sub-questions
    sources: list[str]  # documents, web
    max_subtasks: int
    max_depth: int
    budget: ResearchBudget = ResearchBudget()
    deadline_seconds: float
    notification_config: NotificationConfig | None = None
    status: ResearchStatus
    stopped_by: StopReason | None = None
    error: str | None = None
    totals: Totals = Totals()
    subruns: list[Subrun] = []
    report: str | None = None  # Markdown, once the job ended
    citations: list[Citation] = []
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


SourceKind = Annotated[str, msgspec.Meta(pattern="^(documents|web)$")]


class ResearchSpec(Record, frozen=True, kw_only=True):
    """What a client says about a new research job: the fields of `StartResearch`, the body of `POST /v1/research`."""

    question: Annotated[str, msgspec.Meta(min_length=1, max_length=10_000)]
    agent: AgentName = "researcher"  # answers each sub-question
    sources: Annotated[list[SourceKind], msgspec.Meta(min_length=1, max_length=2)] = msgspec.field(
        default_factory=lambda: ["documents"]
    )
    max_subtasks: Annotated[int, msgspec.Meta(ge=1, le=50)] = 8
    max_depth: Annotated[int, msgspec.Meta(ge=1, le=5)] = 2
    budget: ResearchBudget = ResearchBudget()
    deadline_seconds: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 1800.0
    notification_config: NotificationConfig | None = None


class StartResearch(ResearchSpec, Message, frozen=True, kw_only=True, tag="start_research"):
    """ab.research.cmd.<tenant>.<job_id> (or the `start` service, which also answers with the job)."""

    job_id: str


class CancelResearch(Message, frozen=True, kw_only=True, tag="cancel_research"):
    job_id: str
    reason: str = "cancelled by request"


ResearchCommand = StartResearch | CancelResearch


class GetResearch(Message, frozen=True, kw_only=True, tag="get_research"):
    job_id: str


class ListResearch(Message, frozen=True, kw_only=True, tag="list_research"):
    """The tenant's research jobs, newest first (by `created_at`), after `after` when given."""

    limit: int = 50
    after: Keyset | None = None  # the previous page's `next_after`
    status: ResearchStatus | None = None


ResearchQuery = (
    IngestDocument
    | GetDocument
    | ListDocuments
    | SearchDocuments
    | FetchPage
    | StartResearch
    | GetResearch
    | ListResearch
    | CancelResearch
)


class ResearchView(Message, frozen=True, kw_only=True, tag="research"):
    job: ResearchJob
    notification_secret: str | None = None  # only in the answer to `start`: signs the job's webhooks


class ResearchList(Message, frozen=True, kw_only=True, tag="research_list"):
    """A page of jobs (fewer than asked when they are large: the reply stays well under 1 MB)."""

    jobs: list[ResearchJob]
    next_after: Keyset | None = None  # more after this page


ResearchReply = DocumentView | DocumentList | DocumentHits | FetchedPage | ResearchView | ResearchList | ErrorReply


# --- events: ab.research.evt.<tenant>.<job_id>.<kind> -------------------------------------------


class PhaseChanged(Message, frozen=True, kw_only=True, tag="phase"):
    job_id: str
    status: ResearchStatus
    depth: int = 0  # while researching: which round (1: the plan's sub-questions, 2+: follow-ups)


class SubrunStarted(Message, frozen=True, kw_only=True, tag="subrun_started"):
    job_id: str
    run_id: str
    kind: SubrunKind
    depth: int = 0
    question: str | None = None


class SubrunFinished(Message, frozen=True, kw_only=True, tag="subrun_finished"):
    """A sub-run ended; `totals` are the job's running totals after it."""

    job_id: str
    run_id: str
    kind: SubrunKind
    status: str
    usage: Usage = Usage()
    totals: Totals = Totals()


class ResearchFinished(Message, frozen=True, kw_only=True, tag="research_finished"):
    job_id: str
    status: ResearchStatus
    stopped_by: StopReason | None = None
    error: str | None = None
    totals: Totals = Totals()


ResearchEvent = PhaseChanged | SubrunStarted | SubrunFinished | ResearchFinished
