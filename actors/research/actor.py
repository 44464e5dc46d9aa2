"""The research actor: research jobs (plan, fan out, gather, synthesize; `jobs.py`, `subruns.py`), and the
sources they read (`sources.py`) — documents a tenant ingests (PostgreSQL full-text search) and web
pages fetched on request."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, assert_never

import asyncpg
import structlog

from actors._postgres import DATABASE_DOWN, open_pool
from actors._postgres import health as postgres_health
from actors.research.budget import check_limits
from actors.research.config import ResearchConfig
from actors.research.documents import DocumentStore
from actors.research.jobs import Jobs
from actors.research.sources import Sources
from actors.research.store import JobStore
from bus import subjects
from bus.actor import Actor, Consumer, Delivery, Endpoint
from bus.config import BusConfig
from bus.errors import BusError, Reject
from bus.runs import CancelSignals
from bus.streams import EXECUTOR_EVT, RESEARCH_CMD, ConsumerSpec
from bus.tenants import TenantSettingsCache
from schemas.approvals import RunWaiting
from schemas.research import (
    CancelResearch,
    FetchPage,
    GetDocument,
    GetResearch,
    IngestDocument,
    ListDocuments,
    ListResearch,
    ResearchCommand,
    SearchDocuments,
    StartResearch,
)
from schemas.tenants import Quotas

__all__ = ["ResearchActor"]

MIGRATIONS = Path(__file__).parent / "migrations"

log = structlog.get_logger("research")


class ResearchActor(Actor):
    name = subjects.ActorName.RESEARCH
    unavailable_errors = DATABASE_DOWN
    description = "research jobs, and their sources: ingested documents and fetched pages"

    def __init__(self, bus_config: BusConfig, config: ResearchConfig) -> None:
        super().__init__(bus_config)
        self.config = config
        self._pool: asyncpg.Pool | None = None
        self._jobs: Jobs | None = None
        self._sources: Sources | None = None
        self._cancels: CancelSignals[CancelResearch] | None = None
        self._tenants: TenantSettingsCache | None = None

    @property
    def jobs(self) -> Jobs:
        if self._jobs is None:
            raise RuntimeError("research actor is not started")
        return self._jobs

    @property
    def sources(self) -> Sources:
        if self._sources is None:
            raise RuntimeError("research actor is not started")
        return self._sources

    def routes(self) -> Sequence[Consumer[Any] | Endpoint[Any]]:
        # the handlers exist once on_start has run: looked up per request
        return (
            Consumer(
                ConsumerSpec(RESEARCH_CMD, "research-cmd", subjects.research_commands()),
                ResearchCommand,
                self._on_command,
                concurrency=self.config.max_jobs,
            ),
            Consumer(
                ConsumerSpec(EXECUTOR_EVT, "research-waits", subjects.executor_waiting_all(), deliver_new=True),
                RunWaiting,
                lambda w, d: self.jobs.notify_waiting(w, d.tenant, d.trace),
            ),
            Endpoint("start", StartResearch, lambda q, t: self.jobs.start(q, t)),
            Endpoint("get_research", GetResearch, lambda q, t: self.jobs.get(q, t)),
            Endpoint("list_research", ListResearch, lambda q, t: self.jobs.list_jobs(q, t)),
            Endpoint("cancel_research", CancelResearch, lambda q, t: self.jobs.cancel(q, t)),
            Endpoint("ingest", IngestDocument, lambda q, t: self.sources.ingest(q, t)),
            Endpoint("get_document", GetDocument, lambda q, t: self.sources.get(q, t)),
            Endpoint("list_documents", ListDocuments, lambda q, t: self.sources.list(q, t)),
            Endpoint("search", SearchDocuments, lambda q, t: self.sources.search(q, t)),
            Endpoint("fetch", FetchPage, lambda q, t: self.sources.fetch(q, t)),
        )

    async def on_start(self) -> None:
        self._pool = await open_pool(self.config.database_url, schema="research", migrations=MIGRATIONS)
        if resealed := await JobStore(self._pool).reseal(self.config.secrets):
            log.info("notification secrets sealed under the current key", count=resealed)
        self._cancels = CancelSignals(self.bus, subjects.research_cancels(), CancelResearch, lambda c: c.job_id)
        await self._cancels.start()
        self._tenants = tenants = TenantSettingsCache(self.bus)
        await tenants.start()

        def quotas(tenant: str) -> Quotas:
            return tenants.get(tenant).quotas

        self._jobs = Jobs(self.bus, JobStore(self._pool), self.config, self._cancels, quotas)
        self._sources = Sources(self.config, DocumentStore(self._pool), quotas)

    async def on_stop(self) -> None:
        if self._tenants is not None:
            await self._tenants.stop()
        if self._cancels is not None:
            await self._cancels.stop()
        if self._pool is not None:
            await self._pool.close()

    async def health_checks(self) -> dict[str, str]:
        return await postgres_health(self._pool)

    async def _on_command(self, cmd: StartResearch | CancelResearch, delivery: Delivery) -> None:
        match cmd:
            case StartResearch():
                try:
                    check_limits(cmd)
                    row, _ = await self.jobs.create(cmd, delivery.tenant)
                except BusError as e:
                    raise Reject(e.message) from e
                await self.jobs.drive(row, delivery)
            case CancelResearch():
                try:
                    await self.jobs.request_cancel(cmd, delivery.trace)
                except BusError as e:
                    raise Reject(e.message) from e
            case _:
                assert_never(cmd)

    async def on_dead_letter(self, body: object | None, delivery: Delivery, reason: str) -> None:
        if isinstance(body, StartResearch):
            await self.jobs.dead_lettered(body, delivery, reason)
