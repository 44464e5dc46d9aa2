"""The documents a tenant ingests, in PostgreSQL (research.documents, full-text indexed)."""

from __future__ import annotations

import asyncpg

from bus.quotas import quota_exceeded
from schemas.research import Document, DocumentHit
from schemas.tenants import Quotas

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

    async def add(
        self, document_id: str, tenant: str, title: str, content_type: str, text: str, *, quotas: Quotas
    ) -> Document | None:
        """Store the document (a retried ingest keeps the first); None if the id is another tenant's.
        BusError(quota_exceeded) when a new one is over the tenant's `documents` or `document_bytes`: counted
        under a per-tenant lock, so replicas ingest one at a time and cannot race past the quota."""
        async with self.pool.acquire() as conn, conn.transaction():
            if (quotas.documents or quotas.document_bytes) and not await conn.fetchval(
                "SELECT 1 FROM documents WHERE id = $1", document_id
            ):
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended('research.documents:' || $1, 0))", tenant
                )
                held = await conn.fetchrow(
                    "SELECT count(*), coalesce(sum(octet_length(content)), 0) FROM documents WHERE tenant = $1", tenant
                )
                count, size = (int(held[0]), int(held[1])) if held is not None else (0, 0)
                if quotas.documents and count >= quotas.documents:
                    raise quota_exceeded("documents", quotas.documents, f"the tenant has {count} documents")
                adding = len(text.encode())
                if quotas.document_bytes and size + adding > quotas.document_bytes:
                    message = f"the documents hold {size} bytes; this one adds {adding}"
                    raise quota_exceeded("document_bytes", quotas.document_bytes, message)
            row = await conn.fetchrow(
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
