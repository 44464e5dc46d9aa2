"""The Litestar app: routes, auth, the one error shape, the access log, OpenAPI, and the bus connection's lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from litestar import Litestar, Request
from litestar.config.cors import CORSConfig
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin

from bus.client import Bus
from bus.config import BusConfig
from bus.credentials import Role
from bus.streams import IDEMPOTENCY_BUCKET
from gateway.access_log import RequestStamp, finish_response
from gateway.agents import list_agents
from gateway.approvals import ApprovalController
from gateway.asyncapi import asyncapi_document
from gateway.audit import read_audit
from gateway.audit_trail import audit_response
from gateway.auth import authorize
from gateway.caller import provide_caller
from gateway.config import GatewayConfig
from gateway.console import console_router, render_report
from gateway.conversations import ConversationController
from gateway.dead_letters import DeadLetterController
from gateway.documents import DocumentController
from gateway.errors import exception_handlers
from gateway.events import event_socket, read_events
from gateway.health import health
from gateway.keys import KeyController, create_ws_token
from gateway.metrics import read_metrics
from gateway.notifications import NotificationController
from gateway.openapi import COMPONENTS, declare_errors
from gateway.pipelines import run_pipeline
from gateway.ratelimit import admit_request, rate_limit_headers
from gateway.research import ResearchController
from gateway.revocation import CloseOnRevoke
from gateway.runs import RunController
from gateway.screening import screen_request
from gateway.state import Gateway
from gateway.stats import read_stats
from gateway.status import read_status
from gateway.tasks import TaskController, TaskRunController, webhook
from gateway.tools import call_tool, list_tools
from gateway.usage import read_usage
from gateway.views import FullResponse
from gateway.ws import chat_socket

__all__ = ["create_app"]

# what a browser may send and read across origins (CORS), once an origin is allowed
CORS_REQUEST_HEADERS = ["authorization", "content-type", "idempotency-key", "last-event-id", "traceparent"]
CORS_EXPOSED_HEADERS = [
    "retry-after",
    "ratelimit",
    "ratelimit-policy",
    "x-correlation-id",
    "idempotent-replayed",
    "location",
]


def cors_config(config: GatewayConfig) -> CORSConfig | None:
    """None (no cross-origin access) unless AGENTBUS_CORS_ORIGINS names origins."""
    if not config.cors_origins:
        return None
    return CORSConfig(
        allow_origins=list(config.cors_origins),
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=CORS_REQUEST_HEADERS,
        expose_headers=CORS_EXPOSED_HEADERS,
    )


log = structlog.get_logger("gateway")


async def _before_request(request: Request[Any, Any, Any]) -> None:
    """What every request meets before its route decodes it: its rate limits, then the screening."""
    await admit_request(request)
    await screen_request(request)


def create_app(config: GatewayConfig, bus_config: BusConfig) -> Litestar:
    """The gateway app; SystemExit (with the reason) for a config it must not run with."""
    if (refusal := config.refusal()) is not None:
        raise SystemExit(f"agentbus gateway: {refusal}")

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        bus = await Bus.connect(bus_config, role=Role.GATEWAY)
        kv = await bus.key_value(IDEMPOTENCY_BUCKET, ttl_s=config.idempotency_ttl_s)
        gateway = Gateway(config, bus, kv)
        if config.auth_off:
            log.warning(
                "AUTHENTICATION IS OFF (AGENTBUS_AUTH=off): every request acts for one tenant; local development only",
                tenant=config.auth_tenant,
                host=config.host,
            )
        else:
            await gateway.keys.start()
        gateway.audit.start()
        await gateway.turns.start()
        await gateway.tenants.start()
        await gateway.rate_limits.start()
        app.state.gateway = gateway
        try:
            yield
        finally:
            await gateway.tenants.stop()
            await gateway.turns.stop()
            await gateway.audit.stop()
            await gateway.keys.stop()
            await bus.close()

    app = Litestar(
        route_handlers=[
            ConversationController,
            RunController,
            ApprovalController,
            TaskController,
            TaskRunController,
            webhook,
            run_pipeline,
            DocumentController,
            ResearchController,
            NotificationController,
            read_events,
            event_socket,
            DeadLetterController,
            KeyController,
            create_ws_token,
            read_audit,
            chat_socket,
            list_agents,
            read_usage,
            list_tools,
            call_tool,
            read_status,
            read_stats,
            health,
            render_report,
            console_router(),
            asyncapi_document,
            read_metrics,
        ],
        before_request=_before_request,
        guards=[authorize],
        middleware=[RequestStamp(), CloseOnRevoke()],
        before_send=[finish_response, audit_response, rate_limit_headers],
        dependencies={"caller": Provide(provide_caller)},
        response_class=FullResponse,
        exception_handlers=exception_handlers,
        lifespan=[lifespan],
        request_max_body_size=config.max_body_bytes,
        cors_config=cors_config(config),
        openapi_config=OpenAPIConfig(
            title="agentbus",
            version="0.1.0",
            description="Run AI agents for your software: chat, sidekick, background tasks, research.",
            path="/schema",
            render_plugins=[SwaggerRenderPlugin(), ScalarRenderPlugin(path="/scalar")],
            components=COMPONENTS,
        ),
    )
    declare_errors(app)
    return app
