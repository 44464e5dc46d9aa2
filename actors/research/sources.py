"""What research reads: the tenant's documents (ingest, read, list, search) and web pages fetched on request.
These answer the executor's source tools (search_documents, fetch_url) and the gateway's /v1/documents."""

from __future__ import annotations

from collections.abc import Callable

from actors.research.config import ResearchConfig
from actors.research.documents import DocumentStore
from actors.research.fetch import FetchError, fetch_text
from actors.research.text import UnsupportedType, to_text
from bus.errors import BusError
from bus.headers import Trace
from schemas._base import Message
from schemas.errors import ErrorCode
from schemas.research import (
    DocumentHits,
    DocumentList,
    DocumentView,
    FetchedPage,
    FetchPage,
    GetDocument,
    IngestDocument,
    ListDocuments,
    SearchDocuments,
)
from schemas.tenants import Quotas

__all__ = ["Sources"]


class Sources:
    """The source endpoints' handlers."""

    def __init__(self, config: ResearchConfig, documents: DocumentStore, quotas: Callable[[str], Quotas]) -> None:
        self.config = config
        self.documents = documents
        self.quotas = quotas  # a tenant's quotas, as its settings say now

    async def fetch(self, query: FetchPage, trace: Trace) -> Message:
        try:
            page = await fetch_text(
                query.url,
                allow=self.config.allow,
                max_bytes=self.config.fetch_max_bytes,
                timeout_s=self.config.fetch_timeout_s,
            )
        except FetchError as e:
            raise BusError(ErrorCode.INVALID, str(e)) from e
        return FetchedPage(
            url=page.url, title=page.title, content_type=page.content_type, text=page.text, truncated=page.truncated
        )

    async def ingest(self, cmd: IngestDocument, trace: Trace) -> Message:
        try:
            text = to_text(cmd.content, cmd.content_type)
        except UnsupportedType as e:
            raise BusError(ErrorCode.INVALID, str(e)) from e
        if not text.strip():
            raise BusError(ErrorCode.INVALID, "the document has no text")
        if len(text) > self.config.max_document_chars:
            raise BusError(ErrorCode.TOO_LARGE, f"documents are limited to {self.config.max_document_chars} characters")
        kind = "text/html" if cmd.content_type.startswith("text/html") else cmd.content_type.split(";")[0].strip()
        quotas = self.quotas(trace.tenant)
        document = await self.documents.add(cmd.document_id, trace.tenant, cmd.title, kind, text, quotas=quotas)
        if document is None:
            raise BusError(ErrorCode.CONFLICT, f"document id {cmd.document_id} is taken")
        return DocumentView(document=document)

    async def get(self, query: GetDocument, trace: Trace) -> Message:
        document = await self.documents.get(query.document_id, trace.tenant)
        if document is None:
            raise BusError(ErrorCode.NOT_FOUND, f"no document {query.document_id}")
        return DocumentView(document=document)

    async def list(self, query: ListDocuments, trace: Trace) -> Message:
        limit = max(1, min(query.limit, 200))
        documents = await self.documents.page(trace.tenant, query.after, limit)
        return DocumentList(documents=documents, next_after=documents[-1].id if len(documents) == limit else None)

    async def search(self, query: SearchDocuments, trace: Trace) -> Message:
        hits = await self.documents.search(trace.tenant, query.query, max(1, min(query.limit, 50)))
        return DocumentHits(hits=hits)
