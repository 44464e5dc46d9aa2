"""Conversation actor: commands it consumes, queries it answers, events it publishes."""

from __future__ import annotations

import enum
from datetime import datetime

from schemas._base import Message, Record
from schemas.errors import ErrorReply
from schemas.fields import AgentName, Metadata
from schemas.pages import Keyset
from schemas.runs import HistoryRef

__all__ = [
    "ContinueConversation",
    "Conversation",
    "ConversationCommand",
    "ConversationEvent",
    "ConversationList",
    "ConversationQuery",
    "ConversationReply",
    "ConversationSummary",
    "ConversationView",
    "CreateConversation",
    "GetConversation",
    "GetHistory",
    "HistoryCursor",
    "HistoryPage",
    "HistoryPart",
    "ListConversations",
    "ListMessages",
    "MessageList",
    "Pattern",
    "Policy",
    "PostMessage",
    "Role",
    "SetContext",
    "StoredMessage",
    "TurnCompleted",
    "TurnFailed",
    "TurnStatus",
]


class Pattern(enum.StrEnum):
    CHATBOT = "chatbot"
    SIDEKICK = "sidekick"
    TASK = "task"  # made by the scheduler for a task run (delegated, scheduled or triggered)


class Policy(enum.StrEnum):
    """What happens to a message that arrives while a turn of the same conversation runs."""

    ENQUEUE = "enqueue"
    REJECT = "reject"
    INTERRUPT = "interrupt"


class Role(enum.StrEnum):
    USER = "user"
    ASSISTANT = "assistant"


class TurnStatus(enum.StrEnum):
    """Where a turn is: waiting behind another, running, ended, or refused by the `reject` policy."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


class Conversation(Record, frozen=True, kw_only=True):
    id: str
    tenant: str
    pattern: Pattern
    agent: str
    policy: Policy
    context: dict[str, object] = {}
    metadata: dict[str, str] = {}
    parent_id: str | None = None  # set on a conversation made by `continue`
    created_at: datetime
    updated_at: datetime
    active_run_id: str | None = None
    queued_runs: int = 0


class ConversationSummary(Record, frozen=True, kw_only=True):
    """A conversation as a list shows it: `updated_at` moves with every turn, `title` is its metadata's `title`."""

    conversation_id: str
    pattern: Pattern
    agent: str
    title: str | None = None
    created_at: datetime
    updated_at: datetime
    messages: int = 0


class StoredMessage(Record, frozen=True, kw_only=True):
    id: str
    conversation_id: str
    role: Role
    content: str
    run_id: str | None = None
    created_at: datetime
    metadata: dict[str, str] = {}


# --- commands (JetStream, ordered per conversation) -------------------------------------------


class PostMessage(Message, frozen=True, kw_only=True, tag="post_message"):
    """A user turn. `run_id` is chosen by the sender so it can listen to the run's output first."""

    conversation_id: str
    message_id: str
    run_id: str
    content: str
    metadata: dict[str, str] = {}
    data: dict[str, object] | None = None  # an event payload: reaches the model as quoted data, never as instructions
    stream: bool = True  # False: nobody watches the tokens, so the run publishes none (cheaper)


class SetContext(Message, frozen=True, kw_only=True, tag="set_context"):
    """Replace a sidekick conversation's application state; the next turn sees it."""

    conversation_id: str
    context: dict[str, object]


ConversationCommand = PostMessage | SetContext


# --- queries (NATS micro service, request/reply) ----------------------------------------------


class CreateConversation(Message, frozen=True, kw_only=True, tag="create_conversation"):
    conversation_id: str
    pattern: Pattern = Pattern.CHATBOT
    agent: AgentName | None = None
    context: dict[str, object] = {}
    policy: Policy = Policy.ENQUEUE
    metadata: Metadata = {}


class GetConversation(Message, frozen=True, kw_only=True, tag="get_conversation"):
    conversation_id: str


class ListMessages(Message, frozen=True, kw_only=True, tag="list_messages"):
    conversation_id: str
    limit: int = 100
    before: str | None = None  # a message id: page backwards from it


class ListConversations(Message, frozen=True, kw_only=True, tag="list_conversations"):
    """The tenant's conversations, latest activity (`updated_at`) first, after `after` when given."""

    limit: int = 50
    after: Keyset | None = None  # the previous page's `next_after`
    pattern: Pattern | None = None


class ContinueConversation(Message, frozen=True, kw_only=True, tag="continue_conversation"):
    """Start a new conversation whose history begins with this one's."""

    conversation_id: str
    new_conversation_id: str


class HistoryCursor(Record, frozen=True, kw_only=True):
    """Where a history page starts: `offset` bytes into the first part with a sequence >= `seq`."""

    seq: int = 0  # 0: what the conversation started from; else a turn's command sequence
    offset: int = 0


class GetHistory(Message, frozen=True, kw_only=True, tag="get_history"):
    """One page of the history a RunRequest names by reference (scoped by the trace's tenant)."""

    ref: HistoryRef
    after: HistoryCursor = HistoryCursor()  # the previous page's `next`; a later `seq` skips parts already held


ConversationQuery = (
    CreateConversation
    | GetConversation
    | ListConversations
    | ListMessages
    | SetContext
    | ContinueConversation
    | GetHistory
)


class ConversationView(Message, frozen=True, kw_only=True, tag="conversation"):
    conversation: Conversation


class ConversationList(Message, frozen=True, kw_only=True, tag="conversation_list"):
    conversations: list[ConversationSummary]
    next_after: Keyset | None = None  # more after this page


class MessageList(Message, frozen=True, kw_only=True, tag="message_list"):
    messages: list[StoredMessage]


class HistoryPart(Record, frozen=True, kw_only=True):
    """Consecutive bytes of one part of the history: a JSON array of pydantic-ai messages (what the
    conversation started from, or one turn's new messages), split across pages when it is large."""

    seq: int
    data: bytes  # base64 on the wire, so a page's size is known before it is encoded


class HistoryPage(Message, frozen=True, kw_only=True, tag="history_page"):
    """Parts in order, at most the conversation's page size in all; `next` is None on the last page."""

    parts: list[HistoryPart] = []
    next: HistoryCursor | None = None


ConversationReply = ConversationView | ConversationList | MessageList | HistoryPage | ErrorReply


# --- events (JetStream, fan-out) --------------------------------------------------------------


class TurnCompleted(Message, frozen=True, kw_only=True, tag="turn_completed"):
    """The assistant's reply is stored; readers may now see it in the history."""

    conversation_id: str
    run_id: str
    message: StoredMessage
    model: str
    offline: bool = False


class TurnFailed(Message, frozen=True, kw_only=True, tag="turn_failed"):
    """The turn ended without a reply: rejected, failed, or cancelled (see `code`)."""

    conversation_id: str
    run_id: str
    error: ErrorReply


ConversationEvent = TurnCompleted | TurnFailed
