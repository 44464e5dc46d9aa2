"""GET /metrics: this process's Prometheus metrics (bus/metrics.py), written by prometheus-client.

Outside /v1 and the API keys: a scraper holds no tenant's key. With AGENTBUS_METRICS_TOKEN set it
needs `Authorization: Bearer <that token>`; without one it is open only while the gateway listens on
loopback, and refused (403) on any other address, so a public gateway never shows its metrics by accident.
"""

from __future__ import annotations

import hmac
from typing import Any

from litestar import Request, Response, get
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from gateway.config import is_loopback
from gateway.errors import ApiError
from gateway.state import gateway_of
from schemas.errors import ErrorCode

__all__ = ["read_metrics"]


def _admit(request: Request[Any, Any, Any]) -> None:
    config = gateway_of(request.app.state).config
    if config.metrics_token is None:
        if not is_loopback(config.host):
            raise ApiError(
                ErrorCode.FORBIDDEN,
                f"/metrics is open on loopback only: the gateway listens on {config.host}; "
                "set AGENTBUS_METRICS_TOKEN and scrape with Authorization: Bearer <token>",
            )
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), config.metrics_token.encode()):
        raise ApiError(ErrorCode.UNAUTHORIZED, "send the metrics token: Authorization: Bearer <AGENTBUS_METRICS_TOKEN>")


@get("/metrics", include_in_schema=False, sync_to_thread=False, opt={"public": True})
def read_metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The Prometheus text format (or OpenMetrics, if the scraper asks for it)."""
    _admit(request)
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(REGISTRY), media_type=content_type)
