"""The Litestar app: routes, auth, the one error shape, the access log, OpenAPI, and the bus connection's lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin

from bus.client import Bus
from bus.config import BusConfig
from gateway.access_log import RequestStamp, finish_response
from gateway.agents import list_agents
from gateway.caller import provide_caller
from gateway.config import GatewayConfig
from gateway.conversations import ConversationController
from gateway.documents import DocumentController
from gateway.errors import exception_handlers
from gateway.health import health
from gateway.notifications import NotificationController
from gateway.openapi import COMPONENTS, declare_errors
from gateway.pipelines import run_pipeline
from gateway.research import ResearchController
from gateway.runs import RunController
from gateway.screening import screen_request
from gateway.state import IDEMPOTENCY_BUCKET, Gateway
from gateway.tasks import TaskController, TaskRunController, webhook
from gateway.tools import call_tool, list_tools
from gateway.usage import read_usage
from gateway.views import FullResponse
from gateway.ws import chat_socket

__all__ = ["create_app"]


def create_app(config: GatewayConfig, bus_config: BusConfig) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        bus = await Bus.connect(bus_config)
        kv = await bus.key_value(IDEMPOTENCY_BUCKET, ttl_s=config.idempotency_ttl_s)
        gateway = Gateway(config, bus, kv)
        await gateway.turns.start()
        await gateway.tenants.start()
        app.state.gateway = gateway
        try:
            yield
        finally:
            await gateway.tenants.stop()
            await gateway.turns.stop()
            await bus.close()

    app = Litestar(
        route_handlers=[
            ConversationController,
            RunController,
            TaskController,
            TaskRunController,
            webhook,
            run_pipeline,
            DocumentController,
            ResearchController,
            NotificationController,
            chat_socket,
            list_agents,
            read_usage,
            list_tools,
            call_tool,
            health,
        ],
        before_request=screen_request,
        middleware=[RequestStamp()],
        before_send=[finish_response],
        dependencies={"caller": Provide(provide_caller)},
        response_class=FullResponse,
        exception_handlers=exception_handlers,
        lifespan=[lifespan],
        request_max_body_size=config.max_body_bytes,
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
