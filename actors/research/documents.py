"""The documents a tenant ingests, in PostgreSQL (research.documents, full-text indexed)."""

from __future__ import annotations

import asyncpg

from schemas.research import Document, DocumentHit

__all__ = ["DocumentStore"]


def _document(row: asyncpg.Record) -> Document:
    return Document(
        id=row["id"],
        tenant=row["tenant"],
        title=row["title"],
        content_type=row["content_type"],
        content=row["content"],
        created_at=row["created_at"],
    )


class DocumentStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def add(self, document_id: str, tenant: str, title: str, content_type: str, text: str) -> Document | None:
        """Store the document (a retried ingest keeps the first); None if the id is another tenant's."""
        row = await self.pool.fetchrow(
            """
            INSERT INTO documents (id, tenant, title, content_type, content) VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id RETURNING *
            """,
            document_id, tenant, title, content_type, text,
        )  # fmt: skip
        return _document(row) if row is not None and row["tenant"] == tenant else None

    async def get(self, document_id: str, tenant: str) -> Document | None:
        row = await self.pool.fetchrow("SELECT * FROM documents WHERE id = $1 AND tenant = $2", document_id, tenant)
        return _document(row) if row is not None else None

    async def page(self, tenant: str, after: str | None, limit: int) -> list[Document]:
        rows = await self.pool.fetch(
            "SELECT * FROM documents WHERE tenant = $1 AND ($2::text IS NULL OR id > $2) ORDER BY id LIMIT $3",
            tenant, after, limit,
        )  # fmt: skip
        return [_document(r) for r in rows]

    async def search(self, tenant: str, query: str, limit: int) -> list[DocumentHit]:
        rows = await self.pool.fetch(
            """
            SELECT d.id, d.title, ts_rank(d.tsv, q) AS rank,
                   ts_headline('english', d.content, q, 'MaxFragments=2, StartSel=«, StopSel=»') AS snippet
            FROM documents d, websearch_to_tsquery('english', $2) q
            WHERE d.tenant = $1 AND d.tsv @@ q
            ORDER BY rank DESC, d.id LIMIT $3
            """,
            tenant, query, limit,
        )  # fmt: skip
        return [
            DocumentHit(document_id=r["id"], title=r["title"], rank=float(r["rank"]), snippet=r["snippet"])
            for r in rows
        ]
