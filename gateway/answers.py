"""What the HTTP API answers, where it is not a bus record as it stands: the schemas of the OpenAPI
document's successful responses. Bodies carry every field (gateway/views.py); an `UNSET` one is absent."""

from __future__ import annotations

from datetime import datetime

import msgspec

from schemas.approvals import Approval
from schemas.conversation import ConversationSummary, StoredMessage
from schemas.notifier import DeliveryRecord
from schemas.research import DocumentHit, ResearchJob
from schemas.runs import PipelineOutput, RunNodeKind, RunRecord, Usage
from schemas.tasks import Task, TaskRun

__all__ = [
    "ApprovalPage",
    "ConversationPage",
    "DeliveryPage",
    "DocumentEntry",
    "DocumentPage",
    "DocumentSearch",
    "FiringStarted",
    "IngestedDocument",
    "MessagePage",
    "PipelineAnswer",
    "ResearchPage",
    "ResearchStarted",
    "RunAnswer",
    "RunPage",
    "RunTreeNode",
    "TaskAnswer",
    "TaskPage",
    "TaskRunAnswer",
    "TaskRunPage",
    "WebhookTaken",
    "shown_once",
]

Secret = str | msgspec.UnsetType


def shown_once(secret: str | None) -> Secret:
    """A secret in the answer that made it, and absent from every later one."""
    return msgspec.UNSET if secret is None else secret


class ApprovalPage(msgspec.Struct, frozen=True, kw_only=True):
    approvals: list[Approval]


class TaskAnswer(Task, frozen=True, kw_only=True):
    """A task with its last runs; the secrets only in the answer that created them."""

    last_runs: list[TaskRun] = []
    webhook_secret: Secret = msgspec.UNSET
    notification_secret: Secret = msgspec.UNSET


class TaskPage(msgspec.Struct, frozen=True, kw_only=True):
    tasks: list[Task]
    next_after: str | None  # more after this page: pass it as `after`


class TaskRunPage(msgspec.Struct, frozen=True, kw_only=True):
    runs: list[TaskRun]
    next_after: str | None


class TaskRunAnswer(TaskRun, frozen=True, kw_only=True):
    """A task run and its deliveries (None, and why, while the notifier does not answer)."""

    deliveries: list[DeliveryRecord] | None
    deliveries_error: Secret = msgspec.UNSET


class FiringStarted(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    task_run_id: str


class WebhookTaken(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    firing_id: str


class ConversationPage(msgspec.Struct, frozen=True, kw_only=True):
    conversations: list[ConversationSummary]
    next_after: str | None  # more after this page: pass it as `after`


class MessagePage(msgspec.Struct, frozen=True, kw_only=True):
    messages: list[StoredMessage]


class DocumentEntry(msgspec.Struct, frozen=True, kw_only=True):
    """A document without its text."""

    id: str
    tenant: str
    title: str
    content_type: str
    created_at: datetime


class IngestedDocument(DocumentEntry, frozen=True, kw_only=True):
    characters: int  # the length of the text stored


class DocumentPage(msgspec.Struct, frozen=True, kw_only=True):
    documents: list[DocumentEntry]
    next_after: str | None


class DocumentSearch(msgspec.Struct, frozen=True, kw_only=True):
    hits: list[DocumentHit]


class ResearchStarted(ResearchJob, frozen=True, kw_only=True):
    notification_secret: Secret = msgspec.UNSET  # shown once: verifies the job's webhooks


class DeliveryPage(msgspec.Struct, frozen=True, kw_only=True):
    deliveries: list[DeliveryRecord]


class PipelineAnswer(PipelineOutput, frozen=True, kw_only=True):
    """Each step's typed result."""

    run_id: str
    usage: Usage


class RunAnswer(RunRecord, frozen=True, kw_only=True):
    """A run's record: `usage` is what its own model requests spent, `total_usage` that and what every run
    under it spent (pipeline steps, subagent hand-offs)."""

    total_usage: Usage


class RunPage(msgspec.Struct, frozen=True, kw_only=True):
    runs: list[RunAnswer]
    next_after: str | None


class ResearchPage(msgspec.Struct, frozen=True, kw_only=True):
    jobs: list[ResearchJob]
    next_after: str | None


class RunTreeNode(msgspec.Struct, frozen=True, kw_only=True):
    """A node of a run tree: for a run, every field of the run beside these (a research job's node has only these)."""

    id: str
    kind: RunNodeKind
    children: list[RunTreeNode]
