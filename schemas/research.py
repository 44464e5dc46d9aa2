"""Research actor: documents a tenant ingests as sources, and searching them."""

from __future__ import annotations

from datetime import datetime

from schemas._base import Message, Record
from schemas.errors import ErrorReply

__all__ = [
    "Document",
    "DocumentHit",
    "DocumentHits",
    "DocumentList",
    "DocumentView",
    "GetDocument",
    "IngestDocument",
    "ListDocuments",
    "ResearchQuery",
    "ResearchReply",
    "SearchDocuments",
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
    title: str
    content: str
    content_type: str = "text/plain"


class GetDocument(Message, frozen=True, kw_only=True, tag="get_document"):
    document_id: str


class ListDocuments(Message, frozen=True, kw_only=True, tag="list_documents"):
    limit: int = 50
    after: str | None = None


class SearchDocuments(Message, frozen=True, kw_only=True, tag="search_documents"):
    """Full-text search (PostgreSQL, English stemming; web-search syntax: "quoted", -excluded, or)."""

    query: str
    limit: int = 10


ResearchQuery = IngestDocument | GetDocument | ListDocuments | SearchDocuments


class DocumentView(Message, frozen=True, kw_only=True, tag="document"):
    document: Document


class DocumentList(Message, frozen=True, kw_only=True, tag="document_list"):
    documents: list[Document]
    next_after: str | None = None


class DocumentHits(Message, frozen=True, kw_only=True, tag="document_hits"):
    hits: list[DocumentHit]


ResearchReply = DocumentView | DocumentList | DocumentHits | ErrorReply
