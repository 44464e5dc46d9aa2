"""The research actor. Today: the documents research runs on — ingest, read, list, and rank them
with PostgreSQL full-text search (agents reach it through the executor's `search_documents` tool).
The research job itself (plan, fan out, gather, synthesize) is the next step (issue 4)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from actors._postgres import health as postgres_health
from actors._postgres import open_pool
from actors.research.config import ResearchConfig
from actors.research.text import UnsupportedType, to_text
from bus import subjects
from bus.actor import Actor, Consumer, Endpoint
from bus.config import BusConfig
from bus.errors import BusError
from bus.headers import Trace
from schemas._base import Message
from schemas.errors import ErrorCode
from schemas.research import (
    Document,
    DocumentHit,
    DocumentHits,
    DocumentList,
    DocumentView,
    GetDocument,
    IngestDocument,
    ListDocuments,
    SearchDocuments,
)

__all__ = ["ResearchActor"]

MIGRATIONS = Path(__file__).parent / "migrations"


def _document(row: Any) -> Document:
    return Document(
        id=row["id"],
        tenant=row["tenant"],
        title=row["title"],
        content_type=row["content_type"],
        content=row["content"],
        created_at=row["created_at"],
    )


class ResearchActor(Actor):
    name = subjects.ActorName.RESEARCH
    description = "research sources: ingested documents and their full-text search"

    def __init__(self, bus_config: BusConfig, config: ResearchConfig) -> None:
        super().__init__(bus_config)
        self.config = config
        self._pool: Any = None

    def routes(self) -> Sequence[Consumer[Any] | Endpoint[Any]]:
        return (
            Endpoint("ingest", IngestDocument, self._ingest),
            Endpoint("get_document", GetDocument, self._get),
            Endpoint("list_documents", ListDocuments, self._list),
            Endpoint("search", SearchDocuments, self._search),
        )

    async def on_start(self) -> None:
        self._pool = await open_pool(self.config.database_url, schema="research", migrations=MIGRATIONS)

    async def on_stop(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def health_checks(self) -> dict[str, str]:
        return await postgres_health(self._pool)

    async def _ingest(self, cmd: IngestDocument, trace: Trace) -> Message:
        try:
            text = to_text(cmd.content, cmd.content_type)
        except UnsupportedType as e:
            raise BusError(ErrorCode.INVALID, str(e)) from e
        if not text.strip():
            raise BusError(ErrorCode.INVALID, "the document has no text")
        if len(text) > self.config.max_document_chars:
            raise BusError(ErrorCode.TOO_LARGE, f"documents are limited to {self.config.max_document_chars} characters")
        kind = "text/html" if cmd.content_type.startswith("text/html") else cmd.content_type.split(";")[0].strip()
        row = await self._pool.fetchrow(
            """
            INSERT INTO documents (id, tenant, title, content_type, content) VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id RETURNING *
            """,
            cmd.document_id, trace.tenant, cmd.title, kind, text,
        )  # fmt: skip
        if row["tenant"] != trace.tenant:
            raise BusError(ErrorCode.CONFLICT, f"document id {cmd.document_id} is taken")
        return DocumentView(document=_document(row))

    async def _get(self, query: GetDocument, trace: Trace) -> Message:
        row = await self._pool.fetchrow(
            "SELECT * FROM documents WHERE id = $1 AND tenant = $2", query.document_id, trace.tenant
        )
        if row is None:
            raise BusError(ErrorCode.NOT_FOUND, f"no document {query.document_id}")
        return DocumentView(document=_document(row))

    async def _list(self, query: ListDocuments, trace: Trace) -> Message:
        limit = max(1, min(query.limit, 200))
        rows = await self._pool.fetch(
            "SELECT * FROM documents WHERE tenant = $1 AND ($2::text IS NULL OR id > $2) ORDER BY id LIMIT $3",
            trace.tenant, query.after, limit,
        )  # fmt: skip
        documents = [_document(r) for r in rows]
        return DocumentList(documents=documents, next_after=documents[-1].id if len(documents) == limit else None)

    async def _search(self, query: SearchDocuments, trace: Trace) -> Message:
        rows = await self._pool.fetch(
            """
            SELECT d.id, d.title, ts_rank(d.tsv, q) AS rank,
                   ts_headline('english', d.content, q, 'MaxFragments=2, StartSel=«, StopSel=»') AS snippet
            FROM documents d, websearch_to_tsquery('english', $2) q
            WHERE d.tenant = $1 AND d.tsv @@ q
            ORDER BY rank DESC, d.id LIMIT $3
            """,
            trace.tenant, query.query, max(1, min(query.limit, 50)),
        )  # fmt: skip
        hits = [
            DocumentHit(document_id=r["id"], title=r["title"], rank=float(r["rank"]), snippet=r["snippet"])
            for r in rows
        ]
        return DocumentHits(hits=hits)
